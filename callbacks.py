"""The pretraining app's Trainer callbacks: printed progress (a bar or plain lines), the JSONL training log, generation
samples, the curves, the last step's row, and the stop on SIGTERM or Ctrl-C at a step boundary.

    from callbacks import GenerationSamplesCallback
    trainer = Trainer(model=model, args=args, train_dataset=..., processing_class=tokenizer,
                      callbacks=[GenerationSamplesCallback(["The capital of France is"], steps=500)])

Each works with a stock `transformers.Trainer` and any causal LM (the app's `run_pretrain.build_trainer` wires them to
its own). Each does one thing and computes no metric (the app's trainer computes every logged value,
`pretraining/trainer.py`, before the trackers and these get the row), so their order does not matter. Files go into
`args.output_dir`, written by the main process only, and the log files are cut back to the resumed step on a restart
so that every step is logged exactly once across resumes. (The trainer's own step timer listens to the Trainer's
events too, `pretraining/throughput.StepMeter`: it is a part of the trainer, which adds it itself.)
"""

import os
import signal
import sys

import torch
import transformers
from transformers import TrainerCallback

from pretraining.arguments import DEFAULT_PROMPTS
from pretraining.curves import plot_training_log
from pretraining.jsonl import append_jsonl, truncate_jsonl
from pretraining.log_fields import (EVAL_LOSS, LOG_FIELDS, PERPLEXITY, STAGE_TOKENS_BY_SOURCE, TOKENS_BY_SOURCE,
                                   eval_row, score_keys, source_loss_keys)
from pretraining.run_files import SAMPLES_LOG, TRAINING_LOG
from pretraining.signals import EXIT_STATUS, STOP_SIGNALS


class JsonlLogCallback(TrainerCallback):
    """Writes `training_log.jsonl`: one row per training log (`type: "train"`) and per evaluation (`type: "eval"`)."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            truncate_jsonl(os.path.join(args.output_dir, TRAINING_LOG), state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs:  # whatever the trainer logs: a new field needs no change here
            row = {"type": "train", "step": state.global_step,
                   **grouped(logs, TOKENS_BY_SOURCE, STAGE_TOKENS_BY_SOURCE)}
        elif EVAL_LOSS in logs:
            row = {"type": "eval", "step": state.global_step, **eval_row(logs)}
        else:  # the end-of-training summary: printed by the Trainer, kept in trainer_state.json
            return
        append_jsonl(os.path.join(args.output_dir, TRAINING_LOG), row)


def grouped(logs: dict, *names: str) -> dict:
    """`logs` with each name's `name/<key>` fields gathered into one mapping `name: {key: value}`."""
    row = dict(logs)
    for name in names:
        prefix = name + "/"
        group = {key[len(prefix):]: row.pop(key) for key in [key for key in row if key.startswith(prefix)]}
        if group:
            row[name] = group
    return row


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


class LogTheLastStep(TrainerCallback):
    """The last step always gets its training row, so that a run shorter than one logging window is logged too (the
    Trainer logs only every logging_steps)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True


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
    """Every `steps` steps, completes fixed prompts greedily with the model being trained, prints them and appends them
    to `samples.jsonl` in the output folder (step, prompt, text). The tokenizer is the Trainer's `processing_class`.
    Runs on every rank (sharded models need all ranks in the forward); the model goes back to train mode and the
    random state is restored, so training is unaffected."""

    def __init__(self, prompts: list[str] = DEFAULT_PROMPTS, steps: int = 500, max_new_tokens: int = 48):
        self.prompts, self.steps, self.max_new_tokens = list(prompts), steps, max_new_tokens

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            truncate_jsonl(os.path.join(args.output_dir, SAMPLES_LOG), state.global_step)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.steps <= 0 or not self.prompts or state.global_step % self.steps != 0:
            return
        texts = generate_samples(model, processing_class, self.prompts, self.max_new_tokens, args.bf16)
        for prompt, text in zip(self.prompts, texts):
            if state.is_world_process_zero:
                print(f"sample @ step {state.global_step}: {prompt!r} -> {text!r}", flush=True)
                append_jsonl(os.path.join(args.output_dir, SAMPLES_LOG),
                             {"step": state.global_step, "prompt": prompt, "text": text})


@torch.no_grad()
def generate_samples(model, tokenizer, prompts: list[str], max_new_tokens: int, bf16: bool = False) -> list[str]:
    """Each prompt's greedy completion (the new text only), up to `max_new_tokens` tokens or the EOS token."""
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
    """Redraws `training_curves.png` from the log at every evaluation and checkpoint (main process), when the log has
    grown since the last drawing: a checkpoint at an evaluation's step draws once (a drawing takes about 0.2 s)."""

    def __init__(self):
        self.drawn_size = None  # the size of the log the last drawing read (the log only grows during a run)

    def on_evaluate(self, args, state, control, **kwargs):
        self.draw(args, state)

    def on_save(self, args, state, control, **kwargs):
        self.draw(args, state)

    def draw(self, args, state):
        path = os.path.join(args.output_dir, TRAINING_LOG)
        if state.is_world_process_zero and os.path.exists(path) and os.path.getsize(path) != self.drawn_size:
            self.drawn_size = os.path.getsize(path)
            plot_training_log(args.output_dir)


class StopOnSignal(TrainerCallback):
    """SIGTERM (a preemption) and Ctrl-C (SIGINT) finish the current optimizer step, save a checkpoint and stop
    training; a second Ctrl-C exits at once. Installs the handlers for training's length; `received` is the signal
    that stopped the run (or None).

    With several processes the signal may reach only one of them (a preempted node, a scheduler that signals one
    process): the request is shared at every step end by one tiny all-reduce, so that every rank stops after the same
    step and takes part in the same checkpoint. A rank that stopped alone would wait in the checkpoint's barrier while
    the others wait in the next step's gradient all-reduce: a hang.

    transformers' `enable_jit_checkpoint` is not used: it saves before the optimizer step of a batch already taken
    from the data stream (and only after a fixed 3 s wait), so a resume would skip that batch. Saving at the step
    boundary keeps the resume exact.
    """

    def __init__(self):
        self.received = None
        self.step = 0  # the last finished step, for the abort message
        self._previous = {}
        self._group = None  # a gloo group for the flag (on_train_begin)

    def on_train_begin(self, args, state, control, **kwargs):
        self.step = state.global_step
        self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        if args.world_size > 1 and self._group is None:
            # The flag travels on the host, over gloo: read back from an all-reduce on the GPU (NCCL), it would make
            # the host wait for all queued GPU work at every step, a second sync beside the non-finite check's.
            self._group = torch.distributed.new_group(backend="gloo")

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            # a second Ctrl-C: now, without finishing the step or the save (an unfinished checkpoint has no manifest
            # and is skipped at resume); os._exit, so that no thread or worker holds the process up
            print(f"\nInterrupted again: stopped at once. The newest complete checkpoint (up to step {self.step}) is "
                  "intact: run the same command to resume.", file=sys.stderr, flush=True)
            os._exit(EXIT_STATUS[signal.SIGINT])
        if self.received is None:
            self.received = signal.Signals(signum)
            if signum == signal.SIGINT:
                print("\nCtrl-C: finishing this step and saving a checkpoint (Ctrl-C again to stop at once, without "
                      "saving)", file=sys.stderr, flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        self.step = state.global_step
        if args.world_size > 1:
            flag = torch.tensor([float(self.received or 0)])
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self._group)
            if flag.item() and self.received is None:
                self.received = signal.Signals(int(flag.item()))
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
