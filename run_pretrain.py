"""Pretrain (or continue pretraining) SmolLM2 with the Hugging Face Trainer on a streamed corpus.

    python run_pretrain.py                                  # the reference recipe: SmolLM2-135M, cosmopedia-v2
    python run_pretrain.py configs/demo.yaml                # a config file (YAML or JSON) ...
    python run_pretrain.py configs/demo.yaml --max_steps 50 # ... with flags after it overriding it
    python run_pretrain.py --help

Started again on an `output_dir` that holds checkpoints, it resumes from the newest complete one (data
position, optimizer, scheduler and random state included). `--max_steps 5050` after a finished 5000-step
run trains exactly steps 5001-5050 (see README, "Resuming and extending").

The story, one function a step: parse the flags, preflight (what can fail before any loading), the data, the
model, the trainer, training, the report. The pieces live in `pretraining/`.
"""

import os
import sys
import tempfile
import warnings
from functools import partial

import datasets
import torch
import transformers
from transformers import TrainerState, set_seed
from transformers.utils import logging as hf_logging

from modeling_smollm2 import SmolLM2ForCausalLM
from pretraining.arguments import ModelArguments, PretrainingArguments, comma_list, parse_args, traceback_requested
from pretraining.callbacks import (CurvesCallback, GenerationSamplesCallback, JsonlLogCallback, ProgressBarCallback,
                                   ProgressLinesCallback, SigtermCallback)
from pretraining.checkpoints import choose_resume_checkpoint, saved_step
from pretraining.data import DataArguments, TrainingData, build_datasets, collate_blocks
from pretraining.devices import device_peak_flops, probe_device
from pretraining.errors import ArgumentError, HubUnavailableError, NonFiniteLossError, report
from pretraining.eval_tasks import TaskSuite, check_eval_tasks
from pretraining.hub import raise_if_outage
from pretraining.model import build_config, build_model, load_tokenizer
from pretraining.model_card import write_report
from pretraining.run_files import TRAINER_STATE
from pretraining.serving import export_run
from pretraining.throughput import StepMeter, flops_per_token
from pretraining.trainer import PretrainingTrainer


def preflight(training_args: PretrainingArguments) -> None:
    """What can be checked before anything is loaded and that reads packages or folders: lm-eval and its tasks."""
    problems = []
    if training_args.eval_tasks_path and not os.path.isdir(training_args.eval_tasks_path):
        problems.append(f"eval_tasks_path: no such folder: {training_args.eval_tasks_path}")
    elif comma_list(training_args.eval_tasks):  # lm-eval missing or a task it does not know: say so before training
        problems += check_eval_tasks(comma_list(training_args.eval_tasks), training_args.eval_tasks_path)
    if problems:
        raise ArgumentError("; ".join(problems))


def check_output_dir(path: str) -> None:
    """Fail before training if `path` cannot be written (tested by writing, which works for root too)."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ArgumentError(f"output_dir {path} is not writable: {err.strerror or err}") from None


def global_batch(training_args: PretrainingArguments) -> int:
    """Sequences per optimizer step, all processes together."""
    return (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
            * training_args.world_size)


def build_trainer(data_args: DataArguments, training_args: PretrainingArguments, tokenizer, model,
                  data: TrainingData) -> PretrainingTrainer:
    """The trainer with every callback of the app, assembled here."""
    if data.evaluation is None:
        training_args.eval_strategy = "no"
    peak = device_peak_flops(training_args.device, torch.bfloat16 if training_args.bf16 else torch.float32,
                             training_args.peak_tflops)
    step_meter = StepMeter(global_batch(training_args) * data_args.block_size, training_args.world_size,
                           flops_per_token(model.config, data_args.block_size, model.num_parameters()), peak,
                           warn=print if training_args.should_log else None)
    tasks = comma_list(training_args.eval_tasks)
    callbacks = [
        ProgressLinesCallback if training_args.disable_tqdm else ProgressBarCallback,  # concise lines, not dicts
        JsonlLogCallback(training_args.output_dir),
        GenerationSamplesCallback(training_args.output_dir, training_args.generation_prompts,
                                  training_args.generation_steps, training_args.generation_max_new_tokens),
        CurvesCallback(),
        SigtermCallback(),
    ]
    # document masking under flash attention: each batch as one row, for flash's variable-length path
    flatten = data_args.document_masking and model.config._attn_implementation == "flash_attention_2"
    trainer = PretrainingTrainer(
        model=model, args=training_args, train_dataset=data.train, eval_dataset=data.evaluation,
        processing_class=tokenizer, data_collator=partial(collate_blocks, flatten=flatten), callbacks=callbacks,
        step_meter=step_meter, max_nonfinite_steps=training_args.max_nonfinite_steps,
        source_names=[source.name for source in data.mixture or ()],
        task_suite=TaskSuite(tasks, training_args.eval_tasks_limit, training_args.eval_tasks_path,
                             training_args.per_device_eval_batch_size) if tasks else None,
    )
    trainer.remove_callback(transformers.trainer_callback.ProgressCallback)
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    return trainer


def print_summary(model, data_args: DataArguments, training_args: PretrainingArguments, data: TrainingData,
                  peak_flops: float | None) -> None:
    """The start-up lines: model, batch, device, data (a mixture's sources with their normalized weights), and how
    each rank reads the stream."""
    if not training_args.should_log:
        return
    world = training_args.world_size
    sequences = global_batch(training_args)
    source = data_args.train_file or f"{data_args.dataset_name} ({data_args.dataset_config_name}, streamed)"
    if data.mixture:
        source = f"a mixture of {len(data.mixture)} sources"
    dtype = "bf16 autocast, fp32 weights" if training_args.bf16 else "fp32"
    print(f"model: SmolLM2, {model.num_parameters():,} parameters, {model.config.num_hidden_layers} layers, "
          f"hidden {model.config.hidden_size}, vocab {model.config.vocab_size}")
    print(f"batch: {sequences} sequences x {data_args.block_size} tokens = {sequences * data_args.block_size:,} "
          f"tokens/step (per device {training_args.per_device_train_batch_size} x grad accum "
          f"{training_args.gradient_accumulation_steps} x {world} processes)")
    mfu = f"MFU against {peak_flops / 1e12:g} TFLOP/s" if peak_flops else "no MFU (unknown peak: --peak_tflops)"
    print(f"device: {training_args.device} ({dtype}, {mfu}); data: {source}; output: {training_args.output_dir}")
    for mixed in data.mixture or ():
        print(f"mixture: {mixed.weight:.1%} {mixed.name}" + (f" (text column {mixed.text_column!r})"
                                                           if mixed.text_column != data_args.text_column else ""))
    if world > 1:
        print(f"data split between ranks: {data.split_description}")


def train(model_args: ModelArguments, data_args: DataArguments, training_args: PretrainingArguments) -> int:
    set_seed(training_args.seed)
    if training_args.disable_tqdm:
        datasets.disable_progress_bars()  # datasets' own bars (map, file conversion) follow the Trainer's
    checkpoint = choose_resume_checkpoint(training_args)
    trained = saved_step(checkpoint) if checkpoint else 0
    if trained > training_args.max_steps:
        raise ArgumentError(f"{checkpoint} is at step {trained}, past --max_steps {training_args.max_steps}: pass "
                            f"--max_steps {trained} or more to go on from it, or another --output_dir")
    if trained == training_args.max_steps and saved_step(training_args.output_dir) == trained:
        if training_args.should_log:
            print(f"Training is already complete: step {trained} of --max_steps {training_args.max_steps}, the model "
                  f"is in {training_args.output_dir}. Nothing changed; pass a larger --max_steps to train on.")
        return 0
    tokenizer = load_tokenizer(model_args)
    config = build_config(model_args, data_args, tokenizer)
    data = build_datasets(data_args, tokenizer, training_args.process_index, training_args.world_size,
                          seed=training_args.seed)
    check_output_dir(training_args.output_dir)  # inputs are all checked: from here on output_dir may change
    # trained == max_steps: the last checkpoint was saved but not the final model (stopped in between)
    finishing = trained == training_args.max_steps
    model = SmolLM2ForCausalLM.from_pretrained(checkpoint, dtype=torch.float32) if finishing else build_model(
        model_args, config)
    trainer = build_trainer(data_args, training_args, tokenizer, model, data)
    print_summary(model, data_args, training_args, data, trainer.step_meter.peak_flops)
    if training_args.should_log:
        print(f"Saving the final model of {os.path.basename(checkpoint)}" if finishing else
              f"Resuming from {os.path.basename(checkpoint)}" if checkpoint else "Starting from step 0", flush=True)
    if finishing:
        trainer.state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE))
    else:
        try:
            trainer.train(resume_from_checkpoint=checkpoint)
        except Exception as err:  # the Hub failing mid-stream is told apart from everything else, re-raised as is
            raise_if_outage(err, trainer.state.global_step, training_args.output_dir)
            raise
        sigterm = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, SigtermCallback))
        if sigterm.received:
            if training_args.should_log:
                print(f"Stopped by SIGTERM at step {trainer.state.global_step}; checkpoint saved. "
                      "Run the same command to resume.", flush=True)
            return 0
    save_final(trainer, model, model_args, data_args, training_args)
    return 0


def save_final(trainer: PretrainingTrainer, model, model_args: ModelArguments, data_args: DataArguments,
               training_args: PretrainingArguments) -> None:
    """The final model (weights, config with auto_map, model code, tokenizer), its exports, the report (curves and
    model card), the trainer state, and the push to the Hub."""
    model.config.use_cache = True  # the Trainer turns it off for training; users generate with the cache
    trainer.save_model(training_args.output_dir)
    if training_args.should_save:
        for path in export_run(training_args.output_dir, comma_list(training_args.export_formats)):
            print(f"Exported {path}", flush=True)
        write_report(model, model_args, data_args, training_args)
        # written last: its step marks the final model as complete (a finished run started again stops here)
        trainer.save_state()
        print(f"Model saved to {training_args.output_dir}", flush=True)
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message=f"SmolLM2 pretraining: step {trainer.state.global_step}")
        print(f"Pushed to the Hub: {training_args.hub_model_id}", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    show_traceback = traceback_requested(argv)
    hf_logging.set_verbosity_warning()
    hf_logging.disable_progress_bar()  # per-file save/load bars; the Trainer's own bar stays
    # torchdata 0.11 calls an API that torch deprecated; nothing for a user to act on
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
    try:
        model_args, data_args, training_args = parse_args(argv, probe_device(), interactive=sys.stdout.isatty())
        show_traceback = show_traceback or training_args.traceback
        preflight(training_args)
        return train(model_args, data_args, training_args)
    except (ValueError, OSError, NonFiniteLossError, HubUnavailableError) as err:
        return report(err, show_traceback)


if __name__ == "__main__":
    sys.exit(main())
