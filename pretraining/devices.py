"""What the machine offers: the default device, the defaults that follow from it, and GPU peaks for MFU.

    from pretraining.devices import default_device
    model.to(default_device())
"""

from dataclasses import dataclass

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


def default_device() -> torch.device:
    """CUDA if a GPU answers, else Apple's MPS, else the CPU.

    `torch.cuda.is_available()` asks the driver. `torch.accelerator.current_accelerator()` only names the backend
    torch was built for: a CUDA build says `cuda` on a machine with no GPU, and the first tensor put there fails.
    """
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class DeviceReport:
    """What the device answers, read once at start-up (`probe_device`): the input of the device-dependent
    defaults, so that those can be decided (and tested) for any device."""

    type: str  # "cuda", "mps" or "cpu"
    bf16: bool = False  # whether bf16 autocast is supported (CUDA)


def probe_device() -> DeviceReport:
    device = default_device()
    return DeviceReport(device.type, bf16=device.type == "cuda" and torch.cuda.is_bf16_supported())


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
