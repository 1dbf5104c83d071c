"""FLOPs per token and device peaks, for MFU in the training log and the benchmarks.

FLOPs per token follow the PaLM paper's count (Chowdhery et al. 2022, appendix B): 6N for the weight
matmuls forward and backward plus 12·L·H·Q·T for attention scores and values, with N the parameter count
(the tied embedding counted once). SmolLM2-135M at T=2048: 0.807 G + 0.425 G = 1.232 GFLOP/token.
"""

import torch

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
