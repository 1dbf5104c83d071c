"""The model card (`README.md`, Hub format) of a finished run, and the end-of-run report that writes it.

The training app calls `write_report` at the end of training with its recipe settings (`python model_card.py` writes
a card for any finished run). The card states the architecture and size, the data, the steps and tokens trained and
the final losses (from `training_log.jsonl`), the last generation samples (from `samples.jsonl`), the settings as a
table, the curves if drawn, how to load the model and how to serve its exports.
"""

import os
from dataclasses import asdict

from huggingface_hub import ModelCard, ModelCardData

from pretraining.curves import plot_training_log, read_training_log
from pretraining.hub import is_path
from pretraining.jsonl import read_jsonl
from pretraining.log_fields import DATA_STAGE, STAGE_TOKENS_BY_SOURCE, TOKENS_BY_SOURCE, score_keys, source_loss_keys
from pretraining.run_files import CURVES_PNG, MODEL_CARD, RUN_EXPORTS, SAMPLES_LOG, TRAINING_LOG, written_atomically
from pretraining.optimizers import MUON, muon_settings
from pretraining.run_state import RunRecord, changes

MAX_SAMPLES = 3
TAGS = ["smollm2", "text-generation", "pretraining"]
# the training settings the card lists (TrainingArguments' names), then block_size and world_size
RECIPE_KEYS = ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
               "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "optim", "adam_beta1",
               "adam_beta2", "adam_epsilon", "bf16", "seed")


def last_samples(output_dir: str) -> tuple[int | None, list[dict]]:
    """(step, up to MAX_SAMPLES rows) of the last step in samples.jsonl; (None, []) without samples."""
    path = os.path.join(output_dir, SAMPLES_LOG)
    if not os.path.isfile(path):
        return None, []
    rows = list(read_jsonl(path))
    if not rows:
        return None, []
    step = max(row["step"] for row in rows)
    return step, [row for row in rows if row["step"] == step][:MAX_SAMPLES]


def fenced(text: str, language: str = "") -> str:
    """A code block whose fence is longer than any backtick run in `text` (generated code may hold ```)."""
    longest, run = 0, 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def table_cell(value) -> str:
    if isinstance(value, (list, tuple)):
        value = ", ".join(str(item) for item in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def number(value, spec: str) -> str:
    return "not finite" if value is None else format(value, spec)


def results_section(output_dir: str) -> list[str]:
    try:
        train_rows, eval_rows = read_training_log(output_dir)
    except FileNotFoundError:
        return []
    lines = []
    if train_rows:
        last = train_rows[-1]
        trained = f"Trained for {last['step']:,} optimizer steps"
        if last.get("tokens_seen") is not None:
            trained += f" on {last['tokens_seen']:,} tokens"
        lines += [f"{trained}.", "",
                  f"- final training loss: {number(last.get('loss'), '.4f')} (step {last['step']:,})"]
        # a mixture: what each source contributed, and with data stages in each stage
        lines += token_share_lines(last.get(TOKENS_BY_SOURCE) or {}, "- tokens from")
        last_of_stage = {row[DATA_STAGE]: row for row in train_rows if DATA_STAGE in row}
        for stage, row in sorted(last_of_stage.items()):
            lines += token_share_lines(row.get(STAGE_TOKENS_BY_SOURCE) or {}, f"- data stage {stage}: tokens from")
    if eval_rows:
        last = eval_rows[-1]
        lines.append(f"- final eval loss: {number(last.get('eval_loss'), '.4f')}, perplexity "
                     f"{number(last.get('perplexity'), ',.2f')} (step {last['step']:,})")
        lines += [f"- final eval loss on `{key[len('eval_loss/'):]}`: {number(last[key], '.4f')}"
                  for key in source_loss_keys([last])]
        # --eval_tasks: lm-evaluation-harness scores of the last evaluation
        lines += [f"- {key} (lm-evaluation-harness): {number(last[key], '.4f')}" for key in score_keys([last])]
    return ["## Training", ""] + lines + [""] if lines else []


def token_share_lines(by_source: dict[str, int], prefix: str) -> list[str]:
    total = sum(by_source.values())
    return [f"{prefix} `{name}`: {count:,} ({count / total:.1%})" for name, count in by_source.items() if total]


def serving_section(output_dir: str) -> list[str]:
    """How to serve the exports that `--export_formats` wrote beside the model (none: no section)."""
    llama, gguf = (RUN_EXPORTS[fmt] for fmt in ("llama", "gguf"))
    lines = []
    if os.path.isdir(os.path.join(output_dir, llama)):
        lines += [f"`{llama}/` is the same model in Llama format (no remote code), for vLLM, TGI, MLX and "
                  "transformers:", "", fenced(f"vllm serve {llama}", "bash"), ""]
    if os.path.isfile(os.path.join(output_dir, gguf)):
        lines += [f"`{gguf}` is the same model as GGUF, for llama.cpp and Ollama:", "",
                  fenced(f'llama-cli -m {gguf} -p "The capital of France is" -n 40', "bash"), ""]
    return ["## Serving", "", "Paths are relative to this folder.", ""] + lines if lines else []


def write_model_card(output_dir: str, *, model_config, num_parameters: int, data_description: str,
                     training_args: dict, hub_model_id: str | None = None, license: str = "apache-2.0",
                     datasets: list[str] | None = None, base_model: str | None = None) -> str:
    """Write `output_dir/README.md` and return its path.

    `model_config` is a `PretrainedConfig` or a dict of its fields; `training_args` holds the recipe settings
    to list (name -> value); `hub_model_id`, when the model is pushed, replaces the folder path in the
    loading code. `license`, `datasets` (Hub ids) and `base_model` (the Hub id continued from) go into the card's
    metadata, which the Hub indexes.
    """
    config = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
    # what a reader can paste: the Hub id, else the folder as this command saw it (an absolute path of this machine
    # means nothing elsewhere)
    name = hub_model_id or os.path.relpath(output_dir)
    lines = [
        f"# {os.path.basename(hub_model_id or os.path.abspath(output_dir))}",
        "",
        f"A causal language model with the SmolLM2 architecture (a Llama-style decoder): "
        f"{num_parameters:,} parameters, {config['num_hidden_layers']} layers, hidden size {config['hidden_size']}, "
        f"{config['num_attention_heads']} attention heads, {config['num_key_value_heads']} key-value heads, "
        f"vocabulary {config['vocab_size']:,}. Pretrained with the Hugging Face Trainer.",
        "",
        "## Data",
        "",
        data_description,
        "",
    ]
    lines += results_section(output_dir)
    if os.path.isfile(os.path.join(output_dir, CURVES_PNG)):
        lines += [f"![Training curves]({CURVES_PNG})", ""]
    step, samples = last_samples(output_dir)
    if samples:
        lines += ["## Samples", "", f"Greedy completions at step {step:,} (prompt, then generated text):", ""]
        for sample in samples:
            lines += [fenced(sample["prompt"] + sample["text"], "text"), ""]
    if training_args:
        lines += ["## Training configuration", "", "| setting | value |", "| --- | --- |"]
        lines += [f"| {table_cell(key)} | {table_cell(value)} |" for key, value in training_args.items()]
        lines.append("")
    lines += [
        "## How to load",
        "",
        "The model code ships with the weights, hence `trust_remote_code=True`.",
        "",
        fenced(
            "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline\n"
            "\n"
            f'pipe = pipeline("text-generation", model="{name}", trust_remote_code=True)\n'
            'print(pipe("The for statement", max_new_tokens=40)[0]["generated_text"])\n'
            "\n"
            f'tokenizer = AutoTokenizer.from_pretrained("{name}", trust_remote_code=True)\n'
            f'model = AutoModelForCausalLM.from_pretrained("{name}", trust_remote_code=True)', "python"),
        "",
    ]
    lines += serving_section(output_dir)
    try:
        metrics = ["loss", "perplexity"] if read_training_log(output_dir)[1] else ["loss"]
    except FileNotFoundError:
        metrics = None
    metadata = ModelCardData(license=license, library_name="transformers", pipeline_tag="text-generation",
                             tags=TAGS, datasets=datasets or None, base_model=base_model, metrics=metrics)
    path = os.path.join(output_dir, MODEL_CARD)
    with written_atomically(path) as tmp:  # a failed write leaves the card there was
        ModelCard(f"---\n{metadata.to_yaml()}\n---\n" + "\n".join(lines)).save(tmp)
    return path


def write_report(model, model_args, data_args, training_args, record: RunRecord | None = None) -> str:
    """The final training curves and the model card (README.md) beside the saved model; returns the card's path.
    `record`: the run's identity record (run_state.py), whose segments list what changed on resume."""
    output_dir = training_args.output_dir
    if os.path.isfile(os.path.join(output_dir, TRAINING_LOG)):
        plot_training_log(output_dir)
    source = (f"local files: {data_args.train_file}" if data_args.train_file
              else f"`{data_args.dataset_name}` ({data_args.dataset_config_name}), streamed")
    hub_datasets = None if data_args.train_file else [data_args.dataset_name]
    if data_args.mixture:
        mixtures = ["; ".join(f"`{source.name}` {source.weight:.1%}" for source in stage.mixture)
                    for stage in data_args.stages]
        source = (f"a mixture by token shares, {mixtures[0]}" if len(mixtures) == 1 else "data stages, " + "; then ".join(
            f"from step {stage.start_step}: {mixture}" for stage, mixture in zip(data_args.stages, mixtures)))
        hub_datasets = sorted({source.dataset_name for source in data_args.mixture if source.dataset_name}) or None
    if data_args.shuffle_buffer:
        source += (f"; shuffled: each pass in a new shard order, {data_args.shuffle_shards} shards at a time, through "
                   f"a buffer of {data_args.shuffle_buffer:,} documents")
    recipe = {key: getattr(getattr(training_args, key), "value", getattr(training_args, key)) for key in RECIPE_KEYS}
    warmup = training_args.get_warmup_steps(training_args.max_steps)
    if 0 < training_args.warmup_steps < 1:
        recipe["warmup_steps"] = f"{warmup} ({training_args.warmup_steps:g} of max_steps)"
    if training_args.lr_scheduler_kwargs:  # warmup_stable_decay's decay (num_decay_steps, decay_type ...)
        recipe.update({f"lr_scheduler {key}": value for key, value in training_args.lr_scheduler_kwargs.items()})
    if training_args.optim == MUON:  # Muon's settings, defaults included (pretraining/optimizers.py)
        recipe.update({f"muon {key}": value for key, value in asdict(muon_settings(training_args.optim_args)).items()})
    elif training_args.optim_args:
        recipe["optim_args"] = training_args.optim_args
    recipe.update(block_size=data_args.block_size, world_size=training_args.world_size)
    segments = record.segments if record else []
    for earlier, segment in zip(segments, segments[1:]):  # what --allow_changes took on a resume
        for part, items in changes(earlier.identity, segment.identity).items():
            recipe[f"changed from step {segment.from_step}: {part}"] = "; ".join(items)
    return write_model_card(output_dir, model_config=model.config, num_parameters=model.num_parameters(),
                            data_description=f"{source}; documents tokenized with EOS between them and packed into "
                                             f"{data_args.block_size}-token sequences.",
                            training_args=recipe, hub_model_id=training_args.hub_model_id,
                            license=training_args.model_card_license,
                            datasets=hub_datasets,
                            base_model=None if not model_args.model_name_or_path
                            or is_path(model_args.model_name_or_path) else model_args.model_name_or_path)
