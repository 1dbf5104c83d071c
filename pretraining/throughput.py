"""Throughput: the training log's speed fields and the tokens seen (`StepMeter`), and FLOPs per token for MFU.

FLOPs per token follow the PaLM paper's count (Chowdhery et al. 2022, appendix B): 6N for the weight
matmuls forward and backward plus 12·L·H·Q·T for attention scores and values, with N the parameter count
(the tied embedding counted once). SmolLM2-135M at T=2048: 0.807 G + 0.425 G = 1.232 GFLOP/token.
"""

import time

from transformers import TrainerCallback

from pretraining.run_state import Counters, LogWindow


def flops_per_token(config, seq_len: int, num_parameters: int) -> float:
    """Training FLOPs per token (forward + backward): 6N + 12·L·H·Q·T, N = `num_parameters` (`model.num_parameters()`,
    tied weights counted once)."""
    head_dim = config.hidden_size // config.num_attention_heads
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * head_dim * seq_len
    return 6 * num_parameters + attention


class StepMeter(TrainerCallback):
    """Step time, data wait, tokens/s (all ranks and per device), MFU and the tokens seen, for the trainer's log rows.

    A part of the trainer (`PretrainingTrainer` adds it to its own callbacks), not one of the app's callbacks: it feeds
    the values the trainer logs. Steps are timed on the host, so no device sync is added (the trainer's gradient-norm
    check already waits for each step): from the fetch of a step's first batch (`fetched`, which the trainer reports)
    to the end of its optimizer step (the Trainer's `on_optimizer_step` event, before any step-end callback), so that
    step-end work (generation samples, evaluation, checkpoints) is not counted. What it accumulates lives in the run
    state (`window`, `counters`), so a resume goes on from it: tokens and FLOPs are added step by step with the batch
    of that step, never derived from the step count and today's batch.
    """

    def __init__(self, tokens_per_step: int, world_size: int, flops_per_token: float, peak_flops: float | None,
                 window: LogWindow, counters: Counters, warn=print):
        self.tokens_per_step, self.world_size = tokens_per_step, world_size
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.window, self.counters = window, counters
        self.warn = warn  # None where another process warns
        self.start = None  # when the current step's first fetch began

    def fetched(self, start: float, end: float) -> None:
        """The trainer took from `start` to `end` to fetch batches for the current step."""
        self.start = start if self.start is None else self.start
        self.window.data_wait += end - start

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.step_done()

    def step_done(self, now: float | None = None) -> None:
        """The current step's optimizer step has run: its tokens are seen (trained on, or read for a skipped step)."""
        self.counters.tokens_seen += self.tokens_per_step
        if self.start is not None:
            window = self.window
            window.seconds += (time.perf_counter() if now is None else now) - self.start
            window.steps += 1
            window.tokens += self.tokens_per_step
            window.flops += self.tokens_per_step * self.flops_per_token
            self.start = None

    def pop_fields(self) -> dict:
        """The fields for a training log row, over the steps since the last call."""
        window = self.window
        fields = {"tokens_seen": self.counters.tokens_seen}
        if window.steps:
            tokens_per_second = window.tokens / window.seconds
            fields.update(step_time=window.seconds / window.steps, data_wait=window.data_wait / window.steps,
                          tokens_per_second=tokens_per_second,
                          tokens_per_second_per_device=tokens_per_second / self.world_size)
            per_device_flops = window.flops / window.seconds / self.world_size
            mfu = per_device_flops / self.peak_flops if self.peak_flops else None
            if mfu is not None and mfu <= 1:
                fields["mfu"] = mfu
            elif mfu is not None and self.warn:
                # above the peak can only mean a wrong --peak_tflops: a number that is not MFU is not logged
                self.warn(f"warning: the run does {per_device_flops / 1e12:.1f} TFLOP/s per device, above the "
                          f"peak of {self.peak_flops / 1e12:g}: MFU is not logged (check --peak_tflops)", flush=True)
                self.warn = None
        window.steps, window.seconds, window.data_wait, window.tokens, window.flops = 0, 0.0, 0.0, 0, 0.0
        return fields
