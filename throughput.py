"""FLOPs per token and device peaks, for MFU in the training log and the benchmarks.

FLOPs per token follow the PaLM paper's count (Chowdhery et al. 2022, appendix B): 6N for the weight
matmuls forward and backward plus 12·L·H·Q·T for attention scores and values, with N the parameter count
(the tied embedding counted once). SmolLM2-135M at T=2048: 0.807 G + 0.425 G = 1.232 GFLOP/token.
"""

import time

import torch

# Dense (not sparse) bf16 tensor-core peaks, from the vendors' data sheets.
GPU_PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "RTX 4090": 165e12,
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


def measured_matmul_flops(repeats: int = 5, dtype=torch.float32) -> float:
    """The best FLOP/s of `matmul_probe` on this CPU."""
    probe, flops = matmul_probe(dtype=dtype)
    probe()  # warm-up: thread pool, allocator
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        probe()
        best = min(best, time.perf_counter() - start)
    return flops / best


def device_peak_flops(device, dtype=torch.bfloat16, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of `device` for MFU: `override_tflops` if given; a known GPU's dense bf16 peak (fp32
    runs on tensor cores at half of it, as TF32); the measured matmul rate on CPU; None if unknown."""
    if override_tflops:
        return override_tflops * 1e12
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_BF16_FLOPS.items():
            if key in name:
                return peak if dtype == torch.bfloat16 else peak / 2
        return None
    if device.type == "cpu":
        return measured_matmul_flops(dtype=dtype)
    return None
