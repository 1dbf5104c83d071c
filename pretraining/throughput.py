"""Throughput: the training log's speed fields (`StepMeter`) and FLOPs per token for MFU.

FLOPs per token follow the PaLM paper's count (Chowdhery et al. 2022, appendix B): 6N for the weight
matmuls forward and backward plus 12·L·H·Q·T for attention scores and values, with N the parameter count
(the tied embedding counted once). SmolLM2-135M at T=2048: 0.807 G + 0.425 G = 1.232 GFLOP/token.
"""

import time


def flops_per_token(config, seq_len: int, num_parameters: int) -> float:
    """Training FLOPs per token (forward + backward): 6N + 12·L·H·Q·T, N = `num_parameters` (`model.num_parameters()`,
    tied weights counted once)."""
    head_dim = config.hidden_size // config.num_attention_heads
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * head_dim * seq_len
    return 6 * num_parameters + attention


class StepMeter:
    """Step time, data wait, tokens/s (all ranks and per device), MFU and tokens seen, for the trainer's log rows.

    Steps are timed on the host, so no device sync is added (the trainer's gradient-norm check already waits for
    each step): from the fetch of a step's first batch (`fetched`, which the trainer reports) to the end of its
    optimizer step (`step_done`, from the optimizer's post-step hook), so that step-end work (generation samples,
    evaluation, checkpoints) is not counted.
    """

    def __init__(self, tokens_per_step: int, world_size: int, flops_per_token: float, peak_flops: float | None,
                 warn=print):
        self.tokens_per_step, self.world_size = tokens_per_step, world_size
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.warn = warn  # None where another process warns
        self.start = None
        self.steps, self.seconds, self.data_wait = 0, 0.0, 0.0

    def fetched(self, start: float, end: float) -> None:
        """The trainer took from `start` to `end` to fetch batches for the current step."""
        self.start = start if self.start is None else self.start
        self.data_wait += end - start

    def step_done(self, now: float | None = None) -> None:
        """The current step's optimizer step has run."""
        if self.start is not None:
            self.seconds += (time.perf_counter() if now is None else now) - self.start
            self.steps += 1
            self.start = None

    def pop_fields(self, global_step: int) -> dict:
        """The fields for a training log row, over the steps since the last call."""
        fields = {"tokens_seen": global_step * self.tokens_per_step}
        if self.steps:
            step_time = self.seconds / self.steps
            per_device = self.tokens_per_step / step_time / self.world_size
            fields.update(step_time=step_time, data_wait=self.data_wait / self.steps,
                          tokens_per_second=per_device * self.world_size, tokens_per_second_per_device=per_device)
            mfu = per_device * self.flops_per_token / self.peak_flops if self.peak_flops else None
            if mfu is not None and mfu <= 1:
                fields["mfu"] = mfu
            elif mfu is not None and self.warn:
                # above the peak can only mean a wrong --peak_tflops: a number that is not MFU is not logged
                self.warn(f"warning: the run does {mfu * self.peak_flops / 1e12:.1f} TFLOP/s per device, above the "
                          f"peak of {self.peak_flops / 1e12:g}: MFU is not logged (check --peak_tflops)", flush=True)
                self.warn = None
        self.steps, self.seconds, self.data_wait = 0, 0.0, 0.0
        return fields
