"""The app's flags: `ModelArguments`, `PretrainingArguments` (the recipe's `TrainingArguments`) and the data's
`DataArguments`, parsed from a config file and the command line.

    model_args, data_args, training_args = parse_args(["configs/demo.yaml", "--max_steps", "50"], probe_device())

The dataclasses check their values only; what depends on the machine (the device's defaults: bf16, workers) is
decided from a `DeviceReport` in `parse_args`, and what reads files or packages (lm-eval's tasks, folders) is
checked in run_pretrain's preflight.
"""

import dataclasses
import json
import os
from dataclasses import dataclass, field

import torch
import yaml
from accelerate.utils import parse_flag_from_env
from transformers import TrainingArguments
from transformers.training_args import OptimizerNames

from pretraining.data import DataArguments
from pretraining.devices import DeviceReport
from pretraining.errors import ArgumentError, OneLineParser
from pretraining.optimizers import MUON, muon_settings
from pretraining.run_files import RUN_EXPORTS

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
    chunked_loss: bool = field(default=False, metadata={
        "help": "Compute the training loss 1024 tokens at a time in plain PyTorch ops (any device, torch.compile), "
                "never holding the (batch, seq, vocab) logits (3.2 GB per fp32 copy at 8 x 2048), with the same values "
                "and gradients. Off until measured on a GPU; on CPU the speed ops chunk the loss anyway."})


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
    learning_rate: float = field(default=3e-3, metadata={
        "help": "Peak learning rate (AdamW's; with --optim muon, Muon's too: its updates are scaled to AdamW's RMS)."})
    lr_scheduler_type: str = field(default="linear", metadata={
        "help": "Linear warmup then linear decay to 0 (the seed recipe); warmup_stable_decay: warmup, the peak held, "
                "then a decay over the last --decay_steps (SmolLM2's original recipe: configs/smollm2-135m-wsd.yaml); "
                "or any other transformers scheduler."})
    warmup_steps: float = field(default=0.1, metadata={
        "help": "Linear warmup: steps, or a fraction of max_steps when below 1 (default 0.1: 500 of 5000)."})
    decay_steps: float = field(default=0.2, metadata={
        "help": "With --lr_scheduler_type warmup_stable_decay: the decay's length, a fraction of max_steps up to 1 "
                "(default 0.2: the last 20%%, as SmolLM2's recipe) or a whole number of steps above 1. Linear to 0 "
                "unless --lr_scheduler_kwargs says otherwise (decay_type, min_lr_ratio, num_decay_steps)."})
    weight_decay: float = field(default=0.01, metadata={
        "help": "Decoupled weight decay, AdamW's (and Muon's), on all but the norms and biases."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    optim: str = field(default=TrainingArguments.__dataclass_fields__["optim"].default, metadata={
        "help": "The optimizer: the recipe's AdamW (transformers' default), any transformers optimizer, or 'muon': "
                "Muon (torch 2.9+) for the decoder layers' weight matrices and AdamW for the rest, with one "
                "--learning_rate and schedule (README, 'Muon'); its settings (momentum, nesterov, ns_steps, "
                "adjust_lr_fn) through --optim_args.",
        "choices": [name.value for name in OptimizerNames] + [MUON]})
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
                f"llama -> OUTPUT_DIR/{RUN_EXPORTS['llama']}/ (vLLM, TGI), gguf -> OUTPUT_DIR/"
                f"{RUN_EXPORTS['gguf']} (llama.cpp, Ollama). See export.py."})
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
    replace_output_dir: bool = field(default=False, metadata={
        "help": "Replace what --output_dir holds (files this app did not write, or another run) instead of refusing "
                "to start. Never the starting weights (--model_name_or_path)."})
    allow_changes: str | None = field(default=None, metadata={
        "help": "On resume, take these changed settings from the resumed step on instead of refusing: 'data' (the "
                "stream starts afresh on the new data), 'schedule' (learning rate, its schedule, the optimizer and its "
                "settings; another --optim starts without state), 'batch' (per-device batch, gradient accumulation), "
                "comma-separated. The model and tokenizer never change; the model card lists each change."})
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
        # --fsdp, or FSDP from an accelerate config (accelerate launch --config_file configs/accelerate_fsdp.yaml)
        fsdp = bool(self.fsdp) or parse_flag_from_env("ACCELERATE_USE_FSDP")
        if self.eval_tasks and fsdp:
            problems.append("--eval_tasks does not run under --fsdp: lm-eval drives the whole model from one process")
        muon = self.optim == MUON
        if muon:
            problems += self.check_muon(fsdp)
        unknown_formats = set(comma_list(self.export_formats)) - set(RUN_EXPORTS)
        if unknown_formats:
            problems.append(f"export_formats: unknown format(s) {', '.join(sorted(unknown_formats))} "
                            f"(choose from {', '.join(RUN_EXPORTS)})")
        if not self.ignore_data_skip:
            problems.append("ignore_data_skip=False is not supported: a resumed run restores its data position from "
                            "the checkpoint and never re-reads the data it trained on")
        unknown_changes = set(comma_list(self.allow_changes)) - {"data", "schedule", "batch"}
        if unknown_changes:
            problems.append(f"allow_changes: unknown part(s) {', '.join(sorted(unknown_changes))} (choose from data, "
                            "schedule, batch)")
        if self.lr_scheduler_type == "warmup_stable_decay":
            problems += self.resolve_wsd()
        if problems:
            raise ValueError("; ".join(problems))
        # constructed directly rather than by parse_args (which decides them from the device): TrainingArguments'
        # own defaults
        self.bf16 = bool(self.bf16)
        self.dataloader_num_workers = self.dataloader_num_workers or 0
        self.disable_tqdm = bool(self.disable_tqdm)
        if muon:  # not one of transformers' names (OptimizerNames), which __post_init__ checks: the Trainer's AdamW
            self.optim = OptimizerNames.ADAMW_TORCH  # meanwhile (the Trainer gets Muon by optimizer_cls_and_kwargs)
        super().__post_init__()
        if muon:
            self.optim = MUON
        # One process trains on one device. With several GPUs and no launcher the Trainer would wrap the model in
        # nn.DataParallel over all of them (a batch of per_device_train_batch_size x their number, which the recipe's
        # batch, tokens_seen and tokens/s do not count); the Trainer pins n_gpu to 1 the same way for model parallelism.
        # run_pretrain says how to use every GPU (devices.unused_gpus_hint).
        self._n_gpu = min(self._n_gpu, 1)

    def check_muon(self, fsdp: bool) -> list[str]:
        """--optim muon's problems: a torch without it, --optim_args it cannot take, FSDP."""
        if not hasattr(torch.optim, "Muon"):
            return [f"--optim muon needs torch 2.9 or later (torch.optim.Muon), this is torch {torch.__version__}"]
        if fsdp:
            return ["--optim muon does not run under FSDP: Muon orthogonalizes each whole weight matrix, and FSDP "
                    "gives each rank a shard of it (orthogonalizing a shard is not Muon); use DDP (torchrun)"]
        try:
            muon_settings(self.optim_args)
        except ValueError as err:
            return [str(err)]
        return []

    def resolve_wsd(self) -> list[str]:
        """warmup_stable_decay's length of decay from --decay_steps, as `num_decay_steps` in lr_scheduler_kwargs
        (with `decay_type` linear by default), so that transformers' scheduler gets it; returns the problems."""
        kwargs = self.lr_scheduler_kwargs or {}
        if isinstance(kwargs, str):  # from the command line: TrainingArguments would parse it just after this
            try:
                kwargs = json.loads(kwargs)
            except json.JSONDecodeError as err:
                return [f"lr_scheduler_kwargs is not valid JSON ({err.msg}): {kwargs}"]
        decay = self.decay_steps
        if not 0 < decay <= 1 and not (decay > 1 and decay == int(decay)):
            return [f"decay_steps must be a fraction of max_steps in (0, 1] or a whole number of steps above 1, got "
                    f"{decay:g}"]
        steps = kwargs.get("num_decay_steps", round(decay * self.max_steps) if decay <= 1 else int(decay))
        warmup = self.get_warmup_steps(self.max_steps)
        if not 0 < steps <= self.max_steps - warmup:
            return [f"the decay ({steps} steps) must fit in max_steps {self.max_steps} after the warmup ({warmup} "
                    "steps)"]
        self.lr_scheduler_kwargs = {"decay_type": "linear", **kwargs, "num_decay_steps": steps}
        return []


def comma_list(text: str | None) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c'] (flags that take several names, like --eval_tasks)."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def traceback_requested(argv: list[str]) -> bool:
    """`--traceback` (PretrainingArguments.traceback) or SMOLLM2_TRACEBACK, read before parsing: an error in the
    arguments themselves is shown with its traceback too."""
    return "--traceback" in argv or bool(os.environ.get("SMOLLM2_TRACEBACK"))


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
        if key == "dataset_mixture" and isinstance(value, dict):  # {SOURCE: WEIGHT}
            value = [f"{name}={weight}" for name, weight in value.items()]
        elif isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, dict) for v in value)):
            # a mapping (lr_scheduler_kwargs, fsdp_config ...) or a list of them (data_stages): the JSON the flag takes
            value = json.dumps(value)
        values_list = value if isinstance(value, list) else [value]
        argv += [f"--{key}", *(str(v) for v in values_list)]
    return argv


def apply_device_defaults(values: dict, device: DeviceReport, interactive: bool) -> None:
    """The defaults that depend on the machine, for the training flags left at None: bf16 where the GPU has it in
    hardware (not where torch would emulate it) and fp16 was not asked for, 2 DataLoader workers on CUDA, pinned
    memory and non-blocking batch copies only for host-to-GPU copies, a progress bar only on a terminal
    (`interactive`). On a CPU-only machine use_cpu is set, without which accelerate starts no DDP on CPU under
    torchrun (gloo)."""
    if device.type == "cpu":
        values["use_cpu"] = True
    cuda = device.type == "cuda" and not values["use_cpu"]
    if values["bf16"] is None:
        values["bf16"] = cuda and device.bf16 and not values["fp16"]
    if values["disable_tqdm"] is None:
        values["disable_tqdm"] = not interactive
    if values["dataloader_num_workers"] is None:
        values["dataloader_num_workers"] = 2 if cuda else 0
    values["dataloader_pin_memory"] = values["dataloader_pin_memory"] and cuda
    if values["dataloader_pin_memory"] and values["accelerator_config"] is None:
        # a blocking copy of each batch would make the host wait for the GPU at every micro-step
        values["accelerator_config"] = {"non_blocking": True}


def parse_args(argv: list[str], device: DeviceReport,
               interactive: bool = False) -> tuple[ModelArguments, DataArguments, PretrainingArguments]:
    """`[CONFIG.yaml|CONFIG.json] [--flag value ...]` -> the three argument dataclasses, with the defaults that
    depend on `device` (and on stdout being a terminal, `interactive`) decided."""
    if argv and argv[0].endswith((".yaml", ".yml", ".json")):
        argv = config_file_argv(argv[0]) + argv[1:]
    classes = (ModelArguments, DataArguments, PretrainingArguments)
    parser = OneLineParser(classes)
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        raise parser.unknown(unknown)
    values = vars(namespace)
    # decided before PretrainingArguments exists: TrainingArguments' own __post_init__ already sets the device up
    # from use_cpu and the mixed precision from bf16 (HfArgumentParser.parse_args_into_dataclasses, in two steps)
    apply_device_defaults(values, device, interactive)
    return tuple(cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.init}) for cls in classes)
