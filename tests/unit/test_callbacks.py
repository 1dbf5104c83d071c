"""What the callbacks write and print, from the trainer's logs: the progress line, the JSONL rows' names."""

from types import SimpleNamespace

from callbacks import grouped, progress_line
from pretraining.log_fields import eval_row, score_keys, source_loss_keys

STATE = SimpleNamespace(global_step=120, max_steps=5000)


def test_a_training_log_prints_its_declared_fields_in_order():
    logs = {"loss": 4.1234, "learning_rate": 2.88e-3, "step_time": 0.045, "tokens_per_second": 364000.4,
            "mfu": 0.453, "grad_norm": 0.9, "skipped_steps": None}
    assert progress_line(STATE, logs) == ("step 120/5000 | loss 4.1234 | lr 2.880e-03 | step 0.045s | 364,000 tok/s"
                                          " | mfu 45.3%")
    assert progress_line(STATE, {"loss": 1.0, "skipped_steps": 2}) == "step 120/5000 | loss 1.0000 | skipped 2 non-finite"
    assert progress_line(STATE, {"train_runtime": 3.0}) is None  # the end-of-training summary: not a progress line


def test_an_evaluation_row_and_line_name_the_losses_perplexities_and_scores():
    """The trainer logs under eval_; the row drops the prefix except from the losses, and leaves out the Trainer's
    speed metrics."""
    logs = {"eval_loss": 2.5, "eval_perplexity": 12.18, "eval_loss/a.jsonl": 2.0, "eval_perplexity/a.jsonl": 7.39,
            "eval_hellaswag/acc_norm": 0.31, "eval_tasks_runtime": 4.0, "eval_runtime": 1.0,
            "eval_samples_per_second": 3.0, "eval_steps_per_second": 1.0, "epoch": 0.1}
    row = eval_row(logs)
    assert row == {"eval_loss": 2.5, "perplexity": 12.18, "eval_loss/a.jsonl": 2.0, "perplexity/a.jsonl": 7.39,
                   "hellaswag/acc_norm": 0.31, "tasks_runtime": 4.0}
    assert source_loss_keys([row]) == ["eval_loss/a.jsonl"] and score_keys([row]) == ["hellaswag/acc_norm"]
    assert progress_line(STATE, logs) == ("step 120/5000 | eval_loss 2.5000 | perplexity 12.18 | eval_loss/a.jsonl "
                                          "2.0000 | hellaswag/acc_norm 0.3100")


def test_flat_tokens_by_source_fields_become_one_mapping_in_the_row():
    logs = {"loss": 1.0, "tokens_by_source/a.jsonl": 30, "tokens_by_source/hub:cfg": 10}
    assert grouped(logs, "tokens_by_source") == {"loss": 1.0, "tokens_by_source": {"a.jsonl": 30, "hub:cfg": 10}}
    assert grouped({"loss": 1.0}, "tokens_by_source") == {"loss": 1.0}


def test_the_generation_samples_callback_works_with_a_stock_trainer(tmp_path, tokenizer):
    """A user's own script: `from callbacks import GenerationSamplesCallback` (the repository root), a stock
    transformers Trainer, a SmolLM2 model and the tokenizer as its processing_class. samples.jsonl gets a row per
    prompt at every 2nd step, and the last rows are what the trained model completes greedily: text was generated."""
    import subprocess
    import sys

    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator

    from callbacks import GenerationSamplesCallback, generate_samples
    from configuration_smollm2 import SmolLM2Config
    from helpers import ROOT, read_jsonl_file
    from modeling_smollm2 import SmolLM2ForCausalLM

    imported = subprocess.run([sys.executable, "-c", "from callbacks import GenerationSamplesCallback"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr
    torch.manual_seed(0)
    model = SmolLM2ForCausalLM(SmolLM2Config.tiny(vocab_size=len(tokenizer)))
    ids = tokenizer("The quick brown fox jumps over the lazy dog. " * 8)["input_ids"][:64]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=2, learning_rate=1e-3,
                             save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True)
    prompts = ["The quick brown", "Once upon a time,"]
    blocks = Dataset.from_dict({"input_ids": [ids] * 8, "labels": [ids] * 8})  # packed: no padding to do
    trainer = Trainer(model=model, args=args, train_dataset=blocks, data_collator=default_data_collator,
                      processing_class=tokenizer,
                      callbacks=[GenerationSamplesCallback(prompts, steps=2, max_new_tokens=6)])
    trainer.train()
    rows = read_jsonl_file(tmp_path / "samples.jsonl")
    assert [(row["step"], row["prompt"]) for row in rows] == [(step, prompt) for step in (2, 4) for prompt in prompts]
    assert [row["text"] for row in rows[2:]] == generate_samples(model, tokenizer, prompts, 6)
    assert all(row["text"] for row in rows), rows
