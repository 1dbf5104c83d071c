"""Pretrain (or continue pretraining) SmolLM2 with the Hugging Face Trainer on a streamed corpus.

    python run_pretrain.py                                  # the reference recipe: SmolLM2-135M, cosmopedia-v2
    python run_pretrain.py configs/demo.yaml                # a config file (YAML or JSON) ...
    python run_pretrain.py configs/demo.yaml --max_steps 50 # ... with flags after it overriding it
    python run_pretrain.py --help

Started again on an `output_dir` that holds checkpoints, it resumes from the newest complete one (data
position, optimizer, scheduler and random state included). `--max_steps 5050` after a finished 5000-step
run trains exactly steps 5001-5050 (see README, "Resuming and extending").
"""

import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from functools import partial

import datasets
import torch
import transformers
import yaml
from transformers import AutoTokenizer, HfArgumentParser, TrainerState, TrainingArguments, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.utils import is_flash_attn_2_available, logging as hf_logging

from callbacks import (CurvesCallback, GenerationSamplesCallback, JsonlLogCallback, ProgressBarCallback,
                       ProgressLinesCallback, SigtermCallback)
from checkpoints import checkpoint_problem, newest_valid_checkpoint, saved_step
from configuration_smollm2 import SmolLM2Config
from data import DataError, build_datasets, collate_blocks, parse_mixture
from devices import default_device
from eval_tasks import EvalTasksCallback, check_eval_tasks
from export import FORMATS, RUN_EXPORT_NAMES, export_run
from hub import hub_problem
from model_card import write_model_card
from modeling_smollm2 import SmolLM2ForCausalLM, register_auto_classes
from plot_training_log import plot_training_log
from throughput import StepMeter, device_peak_flops, flops_per_token
from trainer import NonFiniteLossError, PretrainingTrainer

DEFAULT_PROMPTS = ["Once upon a time,", "The capital of France is", "Photosynthesis is the process"]


@dataclass
class ModelArguments:
    _argument_group_name = "model (what to train)"
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Start from these weights (continued pretraining): a SmolLM2 or Llama-format folder or Hub id. "
                "Default: train from scratch."})
    gguf_file: str | None = field(default=None, metadata={
        "help": "With --model_name_or_path FOLDER: the .gguf file in it to start from (dequantized)."})
    config_name: str | None = field(default=None, metadata={
        "help": "Model config (folder, Hub id or config.json) when training from scratch. Default: SmolLM2-135M."})
    config_overrides: str | None = field(default=None, metadata={
        "help": "Override config fields when training from scratch, e.g. "
                "'num_hidden_layers=2,hidden_size=64,intermediate_size=128'."})
    tokenizer_name: str = field(default="HuggingFaceTB/SmolLM2-135M", metadata={
        "help": "Tokenizer: Hub id or local folder. From scratch, the model's vocabulary follows it."})
    attn_implementation: str = field(default="sdpa", metadata={
        "help": "Attention backend: 'sdpa' (fast kernels), 'eager' (exact reference) or 'flash_attention_2' (CUDA "
                "with the flash-attn package; with --document_masking its variable-length path).",
        "choices": ["sdpa", "eager", "flash_attention_2"]})


@dataclass
class DataArguments:
    _argument_group_name = "data (what to train on)"
    dataset_name: str = field(default="HuggingFaceTB/smollm-corpus", metadata={"help": "Hub dataset to stream."})
    dataset_config_name: str | None = field(default="cosmopedia-v2", metadata={"help": "Its configuration."})
    train_file: str | None = field(default=None, metadata={
        "help": "Local training data (jsonl/json/parquet/csv/txt) instead of the Hub dataset; same streaming path."})
    validation_file: str | None = field(default=None, metadata={
        "help": "Local validation data. Default: hold out the first --validation_documents documents."})
    text_column: str = field(default="text", metadata={"help": "Column holding the documents' text."})
    block_size: int = field(default=2048, metadata={"help": "Tokens per packed training sample."})
    streaming: bool = field(default=True, metadata={
        "help": "Stream the data (no download or Arrow conversion before training)."})
    validation_documents: int = field(default=1000, metadata={
        "help": "Without --validation_file: documents held out from the start of the stream (never trained on)."})
    max_eval_samples: int = field(default=128, metadata={
        "help": "At most this many packed blocks per evaluation (per source with --dataset_mixture)."})
    dataset_mixture: list[str] | None = field(default=None, metadata={
        "help": "Train on a weighted mixture instead of --dataset_name/--train_file: SOURCE[@COLUMN]=WEIGHT ..., "
                "SOURCE a Hub dataset[:config] (HuggingFaceTB/smollm-corpus:fineweb-edu-dedup) or a local file or "
                "glob (data/code/*.parquet), @COLUMN its text column if not --text_column. Weights are normalized: "
                "each document is drawn from a source with its weight's probability; a source that runs out "
                "starts again. In a config file: a YAML list of the same strings or a mapping SOURCE: WEIGHT."})
    document_masking: bool = field(default=False, metadata={
        "help": "Attention stays within each document of a packed block (position ids restart after each EOS). "
                "Off in the SmolLM2 recipe."})

    def __post_init__(self):
        problems = []
        if self.dataset_mixture is not None:
            try:
                parse_mixture(self.dataset_mixture, self.text_column)
            except DataError as err:
                problems.append(str(err))
            if self.train_file:
                problems.append("--dataset_mixture and --train_file both given: list the file in the mixture")
        if self.block_size <= 0:
            problems.append(f"block_size must be positive, got {self.block_size}")
        if self.validation_documents < 0:
            problems.append(f"validation_documents must be >= 0, got {self.validation_documents}")
        if self.max_eval_samples <= 0:
            problems.append(f"max_eval_samples must be positive, got {self.max_eval_samples}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class PretrainingArguments(TrainingArguments):
    """TrainingArguments with the SmolLM2 reference recipe as defaults, plus generation samples.

    Warmup: linear over the first 10% of max_steps (500 of the 5000-step recipe), then linear decay to
    0 at max_steps. The official run warmed up 2000 of 2M steps at this peak lr; a short run needs a
    relatively longer warmup to stay stable at lr 3e-3, and a fraction keeps short test runs' shape.
    """

    _argument_group_name = "training (the recipe, outputs and every TrainingArguments option)"

    output_dir: str = field(default="smollm2-135m", metadata={"help": "Where checkpoints, logs and the model go."})
    max_steps: int = field(default=5000, metadata={"help": "Optimizer steps (a stream has no epochs)."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Sequences per device per micro-step."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Sequences per device in evaluation."})
    learning_rate: float = field(default=3e-3, metadata={"help": "Peak AdamW learning rate."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "Linear warmup then linear decay to 0."})
    warmup_steps: float = field(default=0.1, metadata={
        "help": "Linear warmup: steps, or a fraction of max_steps when below 1 (default 0.1: 500 of 5000)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (norms and biases excluded)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    logging_steps: float = field(default=10, metadata={"help": "Log (print and training_log.jsonl) every N steps."})
    save_steps: float = field(default=1000, metadata={"help": "Save a checkpoint every N steps."})
    eval_strategy: str = field(default="steps", metadata={"help": "Evaluate every eval_steps."})
    eval_steps: float = field(default=500, metadata={"help": "Evaluate every N steps."})
    bf16: bool | None = field(default=None, metadata={
        "help": "bf16 autocast (fp32 master weights and gradients). Default: on where the device supports it."})
    dataloader_num_workers: int | None = field(default=None, metadata={
        "help": "DataLoader worker processes. Default: 2 on CUDA, 0 elsewhere."})
    ignore_data_skip: bool = field(default=True, metadata={
        "help": "Must stay True: the data position is restored from the checkpoint, nothing is re-read."})
    logging_nan_inf_filter: bool = field(default=False, metadata={
        "help": "Off: a non-finite loss is logged as null. On, the Trainer would log the average of earlier steps "
                "instead and hide the divergence."})
    generation_steps: int = field(default=500, metadata={"help": "Print and save generation samples every N steps (0: never)."})
    generation_prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS), metadata={
        "help": "Fixed prompts for the generation samples."})
    generation_max_new_tokens: int = field(default=48, metadata={"help": "Tokens generated per sample."})
    eval_tasks: str | None = field(default=None, metadata={
        "help": "lm-evaluation-harness tasks scored at every evaluation, e.g. 'hellaswag,arc_easy' (needs the lm-eval "
                "package): '<task>/<metric>' in the evaluation rows of training_log.jsonl, TensorBoard, the curves "
                "and the model card."})
    eval_tasks_limit: int | None = field(default=None, metadata={
        "help": "With --eval_tasks: at most this many examples per task (default: all)."})
    eval_tasks_path: str | None = field(default=None, metadata={
        "help": "With --eval_tasks: a folder of local lm-eval task YAMLs, added to lm-eval's own tasks."})
    export_formats: str | None = field(default=None, metadata={
        "help": "At the end of training, also write the final model for serving engines, e.g. 'llama,gguf': "
                f"llama -> OUTPUT_DIR/{RUN_EXPORT_NAMES['llama']}/ (vLLM, TGI), gguf -> OUTPUT_DIR/"
                f"{RUN_EXPORT_NAMES['gguf']} (llama.cpp, Ollama). See export.py."})
    max_nonfinite_steps: int = field(default=5, metadata={
        "help": "Stop after this many consecutive steps with a NaN/Inf loss or gradient norm (each is skipped)."})
    peak_tflops: float | None = field(default=None, metadata={
        "help": "Device peak TFLOP/s for MFU. Default: a known GPU's data-sheet peak for the precision that runs "
                "(bf16, TF32 or fp32); no MFU on CPU without it."})
    disable_tqdm: bool | None = field(default=None, metadata={
        "help": "No progress bar, plain progress lines only. Default: on when stdout is not a terminal (a file, CI, "
                "a cluster log), where a bar's cursor escapes would garble the output."})
    ddp_find_unused_parameters: bool | None = field(default=False, metadata={
        "help": "Every parameter is used in every step: skip DDP's extra graph traversal."})
    model_card_license: str = field(default="apache-2.0", metadata={
        "help": "License of the trained model, in the model card's metadata (a Hub license identifier)."})
    traceback: bool = field(default=False, metadata={"help": "Show the full traceback on errors."})

    def __post_init__(self):
        problems = []
        for name in ("max_steps", "per_device_train_batch_size", "per_device_eval_batch_size", "learning_rate",
                     "gradient_accumulation_steps"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("save_steps", "eval_steps", "logging_steps"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.generation_steps < 0 or self.generation_max_new_tokens <= 0:
            problems.append(f"generation_steps must be >= 0 and generation_max_new_tokens positive, got "
                            f"{self.generation_steps} and {self.generation_max_new_tokens}")
        if self.max_nonfinite_steps <= 0:
            problems.append(f"max_nonfinite_steps must be positive, got {self.max_nonfinite_steps}")
        if self.eval_tasks_limit is not None and self.eval_tasks_limit <= 0:
            problems.append(f"eval_tasks_limit must be positive, got {self.eval_tasks_limit}")
        if self.eval_tasks_path and not os.path.isdir(self.eval_tasks_path):
            problems.append(f"eval_tasks_path: no such folder: {self.eval_tasks_path}")
        elif comma_list(self.eval_tasks):  # lm-eval missing or a task it does not know: say so before training
            problems += check_eval_tasks(comma_list(self.eval_tasks), self.eval_tasks_path)
        if self.eval_tasks and self.fsdp:
            problems.append("--eval_tasks does not run under --fsdp: lm-eval drives the whole model from one process")
        unknown_formats = set(comma_list(self.export_formats)) - set(FORMATS)
        if unknown_formats:
            problems.append(f"export_formats: unknown format(s) {', '.join(sorted(unknown_formats))} "
                            f"(choose from {', '.join(FORMATS)})")
        if not self.ignore_data_skip:
            problems.append("ignore_data_skip=False is not supported: a resumed run restores its data position from "
                            "the checkpoint and never re-reads the data it trained on")
        if problems:
            raise ValueError("; ".join(problems))
        if default_device().type == "cpu":
            self.use_cpu = True  # without it accelerate starts no DDP on CPU under torchrun (gloo)
        cuda = default_device().type == "cuda" and not self.use_cpu
        if self.bf16 is None:
            self.bf16 = cuda and torch.cuda.is_bf16_supported()
        if self.disable_tqdm is None:
            self.disable_tqdm = not sys.stdout.isatty()
        if self.dataloader_num_workers is None:
            self.dataloader_num_workers = 2 if cuda else 0
        self.dataloader_pin_memory = self.dataloader_pin_memory and cuda  # pinning only helps host-to-GPU copies
        super().__post_init__()


def comma_list(text: str | None) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c'] (flags that take several names, like --eval_tasks)."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]


class ArgumentError(ValueError):
    pass


class OneLineParser(HfArgumentParser):
    """argparse prints the whole usage before an error; one line naming the problem is enough."""

    def error(self, message):
        raise ArgumentError(message)


def config_file_argv(path: str) -> list[str]:
    """A YAML/JSON config file as command-line flags, so that flags given after it override it."""
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ArgumentError(f"cannot read config file {path}: {' '.join(str(err).split())}") from None
    if not isinstance(values, dict):
        raise ArgumentError(f"config file {path} must hold a mapping of option: value, got {type(values).__name__}")
    argv = []
    for key, value in values.items():
        if isinstance(value, dict):  # dataset_mixture: {SOURCE: WEIGHT}
            value = [f"{name}={weight}" for name, weight in value.items()]
        values_list = value if isinstance(value, list) else [value]
        argv += [f"--{key}", *(str(v) for v in values_list)]
    return argv


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, PretrainingArguments]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        argv = config_file_argv(argv[0]) + argv[1:]
    parser = OneLineParser((ModelArguments, DataArguments, PretrainingArguments))
    *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        raise ArgumentError(f"unrecognized arguments: {' '.join(unknown)} (see --help)")
    return tuple(parsed)


def is_path(name: str) -> bool:
    """True when `name` can only mean a local path: it exists, starts like a path, or is no valid Hub repo id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if os.path.exists(name) or name.startswith((".", "/", "~")):
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def from_hub_or_local(load, name: str, what: str, hint: str = "", **kwargs):
    """Call `load(name)`, turning failures into one-line errors that say what went wrong and what to do."""
    missing_folder = f"no such folder: {name}" + ("" if os.path.isabs(name) else f" (relative to {os.getcwd()})")
    if is_path(name):
        if not os.path.exists(name):
            raise ArgumentError(f"cannot load {what}: {missing_folder}")
        try:
            return load(name, **kwargs)
        except (OSError, ValueError) as err:
            raise ArgumentError(f"cannot load {what} from {name}: {str(err).splitlines()[0]}") from err
    try:
        return load(name, **kwargs)
    except (OSError, ValueError) as err:
        reason, not_there = hub_problem(err) or (str(err).splitlines()[0], False)
        if not_there:  # a name like "org/model" is a Hub id or a relative folder: say what failed for both
            reason = f"{missing_folder}, and as a Hub id: {reason}{'; ' + hint if hint else ''}"
        raise ArgumentError(f"cannot load {what} {name!r}: {reason}") from err


def load_tokenizer(model_args: ModelArguments):
    # the real SmolLM2 tokenizer ships with the project: an absolute path to it works from any folder
    bundled = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "smollm2_tokenizer")
    return from_hub_or_local(AutoTokenizer.from_pretrained, model_args.tokenizer_name, "tokenizer",
                             hint=f"offline, the SmolLM2 tokenizer is --tokenizer_name {bundled}")


def apply_overrides(config: SmolLM2Config, overrides: str) -> SmolLM2Config:
    """'k=v,k=v' onto `config` through transformers' `update_from_string`, as run_clm.py does (each value converted
    to the type of the field it replaces). On top: each entry checked first, so that a mistake is named in one line,
    and the result validated again (shapes that don't divide, non-positive sizes ...)."""
    items = [item.strip() for item in overrides.split(",") if item.strip()]
    for item in items:
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise ArgumentError(f"config_overrides entry {item!r} is not key=value")
        if key not in config.to_dict():
            raise ArgumentError(f"config_overrides: unknown config field {key!r}")
        try:
            config.update_from_string(f"{key}={value}")
        except (ValueError, TypeError) as err:
            raise ArgumentError(f"config_overrides: {key}={value!r} does not fit {key} ({err})") from None
    values = config.to_dict()
    if not any(item.partition("=")[0].strip() == "head_dim" for item in items):
        values.pop("head_dim", None)  # derived from hidden_size and num_attention_heads
    return SmolLM2Config(**values)


def build_config(model_args: ModelArguments, data_args: DataArguments, tokenizer) -> SmolLM2Config:
    if model_args.model_name_or_path:
        if model_args.config_overrides:
            raise ArgumentError("--config_overrides cannot change the shape of --model_name_or_path weights")
        config = from_hub_or_local(SmolLM2Config.from_pretrained, model_args.model_name_or_path, "model config",
                                   **({"gguf_file": model_args.gguf_file} if model_args.gguf_file else {}))
    elif model_args.config_name:
        config = from_hub_or_local(SmolLM2Config.from_pretrained, model_args.config_name, "model config")
    else:
        config = SmolLM2Config()
    if not model_args.model_name_or_path:
        # from scratch the vocabulary follows the tokenizer, so every id has an embedding
        config.vocab_size = len(tokenizer)
        config.bos_token_id = tokenizer.bos_token_id
        config.eos_token_id = tokenizer.eos_token_id
        if model_args.config_overrides:
            config = apply_overrides(config, model_args.config_overrides)
    elif config.vocab_size < len(tokenizer):
        raise ArgumentError(f"tokenizer {model_args.tokenizer_name} has {len(tokenizer)} tokens but the model's "
                            f"vocabulary only {config.vocab_size}")
    if data_args.block_size > config.max_position_embeddings:
        raise ArgumentError(f"block_size {data_args.block_size} is above max_position_embeddings "
                            f"{config.max_position_embeddings}")
    if model_args.attn_implementation == "flash_attention_2" and not is_flash_attn_2_available():
        raise ArgumentError("attn_implementation flash_attention_2 needs a CUDA GPU and the flash-attn package "
                            "(pip install flash-attn); use sdpa here")
    config._attn_implementation = model_args.attn_implementation
    # smollm2_ops' backward passes and chunked loss: faster, less memory; the model runs them only where measured
    config.use_speed_ops = True
    register_auto_classes()  # saved checkpoints then carry the model code (remote code) and its auto_map
    return config


def build_model(model_args: ModelArguments, config: SmolLM2Config) -> SmolLM2ForCausalLM:
    if not model_args.model_name_or_path:
        return SmolLM2ForCausalLM(config)
    kwargs = {"gguf_file": model_args.gguf_file} if model_args.gguf_file else {}
    # fp32 master weights: bf16 is autocast only
    loaded = from_hub_or_local(SmolLM2ForCausalLM.from_pretrained, model_args.model_name_or_path, "model",
                               config=config, dtype=torch.float32, **kwargs)
    if not model_args.gguf_file:
        return loaded
    # transformers dequantizes GGUF weights to plain tensors but still marks the model as quantized, which
    # the Trainer refuses to train: the same weights in a plain model
    model = SmolLM2ForCausalLM(loaded.config)
    model.load_state_dict(loaded.state_dict())
    return model


def check_output_dir(path: str) -> None:
    """Fail before training if `path` cannot be written (tested by writing, which works for root too)."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ArgumentError(f"output_dir {path} is not writable: {err.strerror or err}") from None


def resume_checkpoint(training_args: PretrainingArguments) -> str | None:
    """`--resume_from_checkpoint PATH` if given (it must be complete), else the newest complete checkpoint.

    Decided once, on the main process, and sent to the others: ranks that looked for themselves could find the
    folder in different states (a save or a deletion in progress) and resume from different steps. An error is
    sent too, so that every rank stops with it instead of waiting for the main one.
    """
    choice = [None, None]  # (checkpoint, error)
    if training_args.process_index == 0:
        try:
            choice[0] = training_args.resume_from_checkpoint or newest_valid_checkpoint(training_args.output_dir)
            problem = choice[0] and checkpoint_problem(choice[0])
            if problem:
                choice = [None, f"cannot resume from {choice[0]}: {problem}"]
        except OSError as err:
            choice = [None, f"cannot read output_dir {training_args.output_dir}: {err}"]
    if training_args.world_size > 1:
        torch.distributed.broadcast_object_list(choice, src=0)
    if choice[1]:
        raise ArgumentError(choice[1])
    return choice[0]


def global_batch(training_args: PretrainingArguments) -> int:
    """Sequences per optimizer step, all processes together."""
    return (training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
            * training_args.world_size)


def build_trainer(data_args, training_args, tokenizer, model, train_dataset, eval_dataset):
    """The trainer with every callback of the app, assembled here."""
    if eval_dataset is None:
        training_args.eval_strategy = "no"
    peak = device_peak_flops(training_args.device, torch.bfloat16 if training_args.bf16 else torch.float32,
                             training_args.peak_tflops)
    step_meter = StepMeter(global_batch(training_args) * data_args.block_size, training_args.world_size,
                           flops_per_token(model.config, data_args.block_size), peak,
                           warn=print if training_args.should_log else None)
    callbacks = [
        step_meter,  # first: a step ends before samples are generated at it
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
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        processing_class=tokenizer, data_collator=partial(collate_blocks, flatten=flatten), callbacks=callbacks,
        step_meter=step_meter, max_nonfinite_steps=training_args.max_nonfinite_steps,
    )
    trainer.remove_callback(transformers.trainer_callback.ProgressCallback)
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    if training_args.eval_tasks:
        # first in line: its scores join the evaluation's log before TensorBoard and training_log.jsonl see it
        trainer.callback_handler.callbacks.insert(0, EvalTasksCallback(
            comma_list(training_args.eval_tasks), training_args.eval_tasks_limit, training_args.eval_tasks_path,
            training_args.per_device_eval_batch_size))
    return trainer


def print_summary(model, data_args, training_args, peak_flops):
    if not training_args.should_log:
        return
    world = training_args.world_size
    sequences = global_batch(training_args)
    source = data_args.train_file or f"{data_args.dataset_name} ({data_args.dataset_config_name}, streamed)"
    if data_args.dataset_mixture:
        source = f"a mixture of {len(data_args.dataset_mixture)} sources"
    dtype = "bf16 autocast, fp32 weights" if training_args.bf16 else "fp32"
    print(f"model: SmolLM2, {model.num_parameters():,} parameters, {model.config.num_hidden_layers} layers, "
          f"hidden {model.config.hidden_size}, vocab {model.config.vocab_size}")
    print(f"batch: {sequences} sequences x {data_args.block_size} tokens = {sequences * data_args.block_size:,} "
          f"tokens/step (per device {training_args.per_device_train_batch_size} x grad accum "
          f"{training_args.gradient_accumulation_steps} x {world} processes)")
    mfu = f"MFU against {peak_flops / 1e12:g} TFLOP/s" if peak_flops else "no MFU (unknown peak: --peak_tflops)"
    print(f"device: {training_args.device} ({dtype}, {mfu}); data: {source}; output: {training_args.output_dir}")


def print_data_summary(train_dataset, data_args, training_args) -> None:
    """A mixture's sources with their normalized weights, and how each rank reads the stream."""
    if not training_args.should_log:
        return
    for source in train_dataset.mixture or ():
        print(f"mixture: {source.weight:.1%} {source.name}" + (f" (text column {source.text_column!r})"
                                                             if source.text_column != data_args.text_column else ""))
    if training_args.world_size > 1:
        print(f"data split between ranks: {train_dataset.reading}")


def train(model_args, data_args, training_args) -> int:
    set_seed(training_args.seed)
    if training_args.disable_tqdm:
        datasets.disable_progress_bars()  # datasets' own bars (map, file conversion) follow the Trainer's
    checkpoint = resume_checkpoint(training_args)
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
    train_dataset, eval_dataset = build_datasets(data_args, tokenizer, training_args.process_index,
                                                 training_args.world_size, seed=training_args.seed)
    check_output_dir(training_args.output_dir)  # inputs are all checked: from here on output_dir may change
    # trained == max_steps: the last checkpoint was saved but not the final model (stopped in between)
    finishing = trained == training_args.max_steps
    model = SmolLM2ForCausalLM.from_pretrained(checkpoint, dtype=torch.float32) if finishing else build_model(
        model_args, config)
    trainer = build_trainer(data_args, training_args, tokenizer, model, train_dataset, eval_dataset)
    print_summary(model, data_args, training_args, trainer.step_meter.peak_flops)
    print_data_summary(train_dataset, data_args, training_args)
    if training_args.should_log:
        print(f"Saving the final model of {os.path.basename(checkpoint)}" if finishing else
              f"Resuming from {os.path.basename(checkpoint)}" if checkpoint else "Starting from step 0", flush=True)
    if finishing:
        trainer.state = TrainerState.load_from_json(os.path.join(checkpoint, TRAINER_STATE_NAME))
    else:
        trainer.train(resume_from_checkpoint=checkpoint)
        sigterm = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, SigtermCallback))
        if sigterm.received:
            if training_args.should_log:
                print(f"Stopped by SIGTERM at step {trainer.state.global_step}; checkpoint saved. "
                      "Run the same command to resume.", flush=True)
            return 0
    model.config.use_cache = True  # the Trainer turns it off for training; users generate with the cache
    model.config.use_speed_ops = False  # a training choice of this app: the saved model is the plain one
    trainer.save_model(training_args.output_dir)  # weights, config with auto_map, model code, tokenizer
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
    return 0


RECIPE_KEYS = ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
               "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "adam_beta1", "adam_beta2",
               "adam_epsilon", "bf16", "seed")


def write_report(model, model_args, data_args, training_args) -> None:
    """The final training curves and the model card (README.md) beside the saved model."""
    output_dir = training_args.output_dir
    plot_training_log(output_dir)
    source = (f"local files: {data_args.train_file}" if data_args.train_file
              else f"`{data_args.dataset_name}` ({data_args.dataset_config_name}), streamed")
    hub_datasets = None if data_args.train_file else [data_args.dataset_name]
    if data_args.dataset_mixture:
        mixture = parse_mixture(data_args.dataset_mixture, data_args.text_column)
        source = "a mixture, " + ", ".join(f"`{source.name}` {source.weight:.1%}" for source in mixture)
        hub_datasets = sorted({source.dataset_name for source in mixture if source.dataset_name}) or None
    recipe = {key: getattr(getattr(training_args, key), "value", getattr(training_args, key)) for key in RECIPE_KEYS}
    warmup = training_args.get_warmup_steps(training_args.max_steps)
    if 0 < training_args.warmup_steps < 1:
        recipe["warmup_steps"] = f"{warmup} ({training_args.warmup_steps:g} of max_steps)"
    recipe.update(block_size=data_args.block_size, world_size=training_args.world_size)
    write_model_card(output_dir, model_config=model.config, num_parameters=model.num_parameters(),
                     data_description=f"{source}; documents tokenized with EOS between them and packed into "
                                      f"{data_args.block_size}-token sequences.",
                     training_args=recipe, hub_model_id=training_args.hub_model_id,
                     license=training_args.model_card_license,
                     datasets=hub_datasets,
                     base_model=None if not model_args.model_name_or_path or is_path(model_args.model_name_or_path)
                     else model_args.model_name_or_path)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    show_traceback = "--traceback" in argv or bool(os.environ.get("SMOLLM2_TRACEBACK"))
    hf_logging.set_verbosity_warning()
    hf_logging.disable_progress_bar()  # per-file save/load bars; the Trainer's own bar stays
    # torchdata 0.11 calls an API that torch deprecated; nothing for a user to act on
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
    try:
        model_args, data_args, training_args = parse_args(argv)
        return train(model_args, data_args, training_args)
    except (ValueError, OSError, NonFiniteLossError) as err:
        if show_traceback:
            raise
        message = str(err)
        if isinstance(err, DataError) and message.startswith("Caught DataError"):
            # re-raised from a DataLoader worker with the worker's traceback as text: its last line is the error
            message = message.strip().splitlines()[-1].split(": ", 1)[-1]
        message = " ".join(message.split()) or type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return 1 if isinstance(err, NonFiniteLossError) else 2


if __name__ == "__main__":
    sys.exit(main())
