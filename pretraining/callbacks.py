"""Trainer callbacks of the pretraining app: printed progress, the JSONL training log, generation samples, the
curves, and a clean stop on SIGTERM.

Each callback does one thing and computes no metric (the trainer computes every logged value, `trainer.py`), so
their order does not matter; `run_pretrain.build_trainer` wires them to the Trainer. Files are written by the main
process only, and the log files are cut back to the resumed step on a restart so that every step is logged exactly
once across resumes.
"""

import os
import signal

import torch
import transformers
from transformers import TrainerCallback

from pretraining.curves import plot_training_log
from pretraining.jsonl import append_jsonl, truncate_jsonl
from pretraining.log_fields import EVAL_LOSS, LOG_FIELDS, PERPLEXITY, TOKENS_BY_SOURCE, eval_row, score_keys, \
    source_loss_keys
from pretraining.run_files import SAMPLES_LOG, TRAINING_LOG


class JsonlLogCallback(TrainerCallback):
    """Writes `training_log.jsonl`: one row per training log (`type: "train"`) and per evaluation (`type: "eval"`)."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, TRAINING_LOG)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            truncate_jsonl(self.path, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs:  # whatever the trainer logs: a new field needs no change here
            row = {"type": "train", "step": state.global_step, **grouped(logs, TOKENS_BY_SOURCE)}
        elif EVAL_LOSS in logs:
            row = {"type": "eval", "step": state.global_step, **eval_row(logs)}
        else:  # the end-of-training summary: printed by the Trainer, kept in trainer_state.json
            return
        append_jsonl(self.path, row)


def grouped(logs: dict, name: str) -> dict:
    """`logs` with its `name/<key>` fields gathered into one mapping `name: {key: value}`."""
    prefix = name + "/"
    group = {key[len(prefix):]: value for key, value in logs.items() if key.startswith(prefix)}
    row = {key: value for key, value in logs.items() if not key.startswith(prefix)}
    return {**row, name: group} if group else row


def progress_line(state, logs) -> str | None:
    """One plain line for a training log or an evaluation, None for other logs."""
    if "loss" in logs:
        parts = [f"step {state.global_step}/{state.max_steps}"]
        # a field absent or null (no MFU without a known peak, no skipped steps) is left out
        parts += [field.printed.format(logs[field.key]) for field in LOG_FIELDS
                  if field.printed and logs.get(field.key) is not None]
        return " | ".join(parts)
    if EVAL_LOSS in logs:
        row = eval_row(logs)
        scores = "".join(f" | {key} {row[key]:.4f}" for key in source_loss_keys([row]) + score_keys([row]))
        return (f"step {state.global_step}/{state.max_steps} | eval_loss {row[EVAL_LOSS]:.4f} | "
                f"perplexity {row[PERPLEXITY]:.2f}{scores}")
    return None


class ProgressBarCallback(transformers.trainer_callback.ProgressCallback):
    """The Trainer's progress bar, writing one concise line per log instead of the raw dict."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        line = progress_line(state, logs or {})
        if state.is_world_process_zero and line:
            self.training_bar.write(line) if self.training_bar is not None else print(line, flush=True)


class ProgressLinesCallback(TrainerCallback):
    """The same lines without a bar (`--disable_tqdm true`), in place of the Trainer's dict printer."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        line = progress_line(state, logs or {})
        if state.is_world_process_zero and line:
            print(line, flush=True)


class GenerationSamplesCallback(TrainerCallback):
    """Every `generation_steps`, completes fixed prompts greedily, prints them and appends them to
    `samples.jsonl`. Runs on every rank (sharded models need all ranks in the forward); the model goes
    back to train mode and the random state is restored, so training is unaffected."""

    def __init__(self, output_dir: str, prompts: list[str], steps: int, max_new_tokens: int):
        self.path = os.path.join(output_dir, SAMPLES_LOG)
        self.prompts, self.steps, self.max_new_tokens = prompts, steps, max_new_tokens

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            truncate_jsonl(self.path, state.global_step)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.steps <= 0 or not self.prompts or state.global_step % self.steps != 0:
            return
        for prompt, text in zip(self.prompts, generate_samples(model, processing_class, self.prompts, self.max_new_tokens, args.bf16)):
            if state.is_world_process_zero:
                print(f"sample @ step {state.global_step}: {prompt!r} -> {text!r}", flush=True)
                append_jsonl(self.path, {"step": state.global_step, "prompt": prompt, "text": text})


@torch.no_grad()
def generate_samples(model, tokenizer, prompts: list[str], max_new_tokens: int, bf16: bool = False) -> list[str]:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    texts = []
    # sampling settings are greedy, but a kernel may still draw random numbers: keep training's stream intact
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for prompt in prompts:
            inputs = tokenizer(prompt, return_tensors="pt").to(device)
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
            texts.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    model.train(was_training)
    return texts


class CurvesCallback(TrainerCallback):
    """Redraws `training_curves.png` from the log at every evaluation and checkpoint (main process)."""

    def on_evaluate(self, args, state, control, **kwargs):
        self.draw(args, state)

    def on_save(self, args, state, control, **kwargs):
        self.draw(args, state)

    @staticmethod
    def draw(args, state):
        if state.is_world_process_zero and os.path.exists(os.path.join(args.output_dir, TRAINING_LOG)):
            plot_training_log(args.output_dir)


class SigtermCallback(TrainerCallback):
    """On SIGTERM (preemption), finish the current optimizer step, save a checkpoint and stop.

    With several processes the signal may reach only one of them (a preempted node, a scheduler that signals one
    process): the flag is shared at every step end by one tiny all-reduce, so that every rank stops after the same
    step and takes part in the same checkpoint. A rank that stopped alone would wait in the checkpoint's barrier
    while the others wait in the next step's gradient all-reduce: a hang.

    transformers' `enable_jit_checkpoint` is not used: it saves before the optimizer step of a batch
    already taken from the data stream (and only after a fixed 3 s wait), so a resume would skip that
    batch. Saving at the step boundary keeps the resume exact.
    """

    def __init__(self):
        self.received = False
        self._previous = None
        self._group = None  # a gloo group for the flag (on_train_begin)

    def on_train_begin(self, args, state, control, **kwargs):
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        if args.world_size > 1 and self._group is None:
            # The flag travels on the host, over gloo: read back from an all-reduce on the GPU (NCCL), it would make
            # the host wait for all queued GPU work at every step, a second sync beside the non-finite check's.
            self._group = torch.distributed.new_group(backend="gloo")

    def _handle(self, signum, frame):
        self.received = True

    def on_step_end(self, args, state, control, **kwargs):
        if args.world_size > 1:
            flag = torch.tensor([float(self.received)])
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self._group)
            self.received = bool(flag.item())
        if self.received:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
