"""Write a model card (`README.md`, Hub format) into a finished run's output_dir.

    python model_card.py runs/demo --data "CPython's bundled docs (demo_corpus.py)"
    python model_card.py runs/demo --data "cosmopedia-v2" --hub_model_id me/smollm2-demo

The training app calls `write_model_card` at the end of training with its recipe settings. The card states
the architecture and size, the data, the steps and tokens trained and the final losses (from
`training_log.jsonl`), the last generation samples (from `samples.jsonl`), the settings as a table, the
curves from `plot_training_log.py` if drawn, and how to load the model. Run as a command it reads the
architecture from `config.json` and counts parameters from `model.safetensors`, with no recipe table.
"""

import argparse
import json
import os
import sys

import yaml
from huggingface_hub import ModelCard, ModelCardData

from callbacks import SAMPLES_LOG
from export import RUN_EXPORT_NAMES
from plot_training_log import CURVES_PNG, read_training_log, score_keys

MODEL_CARD = "README.md"
MAX_SAMPLES = 3

TAGS = ["smollm2", "text-generation", "pretraining"]


def last_samples(output_dir: str) -> tuple[int | None, list[dict]]:
    """(step, up to MAX_SAMPLES rows) of the last step in samples.jsonl; (None, []) without samples."""
    path = os.path.join(output_dir, SAMPLES_LOG)
    if not os.path.isfile(path):
        return None, []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a torn last line
                continue
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
        by_source = last.get("tokens_by_source") or {}
        total = sum(by_source.values())
        # a mixture: what each source contributed
        lines += [f"- tokens from `{name}`: {count:,} ({count / total:.1%})" for name, count in by_source.items()
                  if total]
    if eval_rows:
        last = eval_rows[-1]
        lines.append(f"- final eval loss: {number(last.get('eval_loss'), '.4f')}, perplexity "
                     f"{number(last.get('perplexity'), ',.2f')} (step {last['step']:,})")
        lines += [f"- final eval loss on `{key[len('eval_loss/'):]}`: {number(last[key], '.4f')}" for key in last
                  if key.startswith("eval_loss/")]
        # --eval_tasks: lm-evaluation-harness scores of the last evaluation
        lines += [f"- {key} (lm-evaluation-harness): {number(last[key], '.4f')}" for key in score_keys([last])]
    return ["## Training", ""] + lines + [""] if lines else []


def serving_section(output_dir: str) -> list[str]:
    """How to serve the exports that `--export_formats` wrote beside the model (none: no section)."""
    llama, gguf = (RUN_EXPORT_NAMES[fmt] for fmt in ("llama", "gguf"))
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
    ModelCard(f"---\n{metadata.to_yaml()}\n---\n" + "\n".join(lines)).save(path)
    return path


def count_parameters(output_dir: str) -> int:
    """Parameters in the folder's safetensors files, read from their headers (tied weights are stored once)."""
    from safetensors import safe_open

    files = [name for name in os.listdir(output_dir) if name.endswith(".safetensors")]
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {output_dir}")
    total = 0
    for name in files:
        with safe_open(os.path.join(output_dir, name), framework="pt") as f:
            for key in f.keys():
                count = 1
                for size in f.get_slice(key).get_shape():
                    count *= size
                total += count
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write README.md (a model card) into a finished run's output_dir.")
    parser.add_argument("output_dir", help="The run's output_dir (config.json, weights, training_log.jsonl).")
    parser.add_argument("--data", required=True, help="One or two sentences on the training data.")
    parser.add_argument("--training_args", help="YAML or JSON file of recipe settings to list, e.g. the run's "
                                                "configs/*.yaml. Default: no settings table.")
    parser.add_argument("--hub_model_id", help="Hub repository id to show in the loading code. Default: the folder.")
    parser.add_argument("--license", default="apache-2.0", help="License identifier for the card's metadata.")
    args = parser.parse_args(argv)
    try:
        with open(os.path.join(args.output_dir, "config.json"), encoding="utf-8") as f:
            model_config = json.load(f)
        training_args = {}
        if args.training_args:
            with open(args.training_args, encoding="utf-8") as f:
                training_args = yaml.safe_load(f) or {}  # YAML is a superset of JSON: one loader for both
        print(write_model_card(args.output_dir, model_config=model_config,
                               num_parameters=count_parameters(args.output_dir), data_description=args.data,
                               training_args=training_args, hub_model_id=args.hub_model_id,
                               license=args.license))
    except (OSError, ValueError, yaml.YAMLError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
