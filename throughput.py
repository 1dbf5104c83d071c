"""Throughput: the training log's speed fields (`StepMeter`), FLOPs per token and device peaks for MFU.

FLOPs per token follow the PaLM paper's count (Chowdhery et al. 2022, appendix B): 6N for the weight
matmuls forward and backward plus 12·L·H·Q·T for attention scores and values, with N the parameter count
(the tied embedding counted once). SmolLM2-135M at T=2048: 0.807 G + 0.425 G = 1.232 GFLOP/token.
"""

import time

import torch
from transformers import TrainerCallback

# Dense (not sparse) peaks in TFLOP/s from the vendors' data sheets: (bf16/fp16 tensor cores, TF32 tensor cores,
# plain fp32). MFU is measured against the column of the precision the matmuls run in.
GPU_PEAK_TFLOPS = {
    "H200": (989, 494, 67),
    "H100 PCIe": (756, 378, 51),
    "H100": (989, 494, 67),  # SXM
    "A100": (312, 156, 19.5),
    "L40S": (362, 183, 91.6),
    "A10G": (70, 35, 31.2),
    "RTX 4090": (165, 82.6, 82.6),
}


def parameter_count(config) -> int:
    """Parameters of a Llama-shaped decoder with tied embeddings, from its config alone."""
    head_dim = config.hidden_size // config.num_attention_heads
    attention = config.hidden_size * head_dim * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    mlp = 3 * config.hidden_size * config.intermediate_size
    norms = 2 * config.hidden_size
    embedding = config.vocab_size * config.hidden_size * (1 if config.tie_word_embeddings else 2)
    return config.num_hidden_layers * (attention + mlp + norms) + config.hidden_size + embedding


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward): 6N + 12·L·H·Q·T."""
    head_dim = config.hidden_size // config.num_attention_heads
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * head_dim * seq_len
    return 6 * parameter_count(config) + attention


def matmul_probe(size: int = 2048, dtype=torch.float32):
    """A square matmul to time, and its FLOPs: the practical peak that CPU MFU is measured against."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    return (lambda: torch.matmul(a, b)), 2 * size**3


def device_peak_flops(device, dtype=torch.bfloat16, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of `device` for matmuls in `dtype`, for MFU: `override_tflops` if given, else a known GPU's
    data-sheet peak (bf16/fp16; fp32 as TF32 when torch lets fp32 matmuls use TF32, plain fp32 otherwise). None
    when unknown, which includes every CPU: a CPU's attainable peak depends on its cores, vector units and load,
    and a peak guessed from a short probe at start-up can be beaten by the run (MFU above 100%)."""
    if override_tflops:
        return override_tflops * 1e12
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (half, tf32, fp32) in GPU_PEAK_TFLOPS.items():
        if key in name:
            if dtype in (torch.bfloat16, torch.float16):
                return half * 1e12
            return (tf32 if torch.get_float32_matmul_precision() != "highest" else fp32) * 1e12
    return None


class StepMeter(TrainerCallback):
    """The one owner of the throughput fields of the training log: step time, data wait, tokens/s (all ranks and
    per device), MFU and tokens seen.

    Steps are timed on the host, so no device sync is added (the trainer's gradient-norm check already waits for
    each step): from the fetch of a step's first batch (the trainer reports its fetches, `fetched`) to the step's
    end, `on_step_end`. The app puts this callback first, so that generation samples or other step-end work are
    not counted.
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

    def on_step_end(self, args, state, control, **kwargs):
        if self.start is not None:
            self.seconds += time.perf_counter() - self.start
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
