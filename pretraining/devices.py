"""What the machine offers: the default device, what it reports (`DeviceReport`), the decisions that follow from it
(precision, how many GPUs one process trains on), and GPU peaks for MFU.

    from pretraining.devices import default_device
    model.to(default_device())

The decisions are pure functions of a `DeviceReport`, so that each GPU branch is tested with the values a GPU gives,
on any machine.
"""

import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GpuPeaks:
    """One GPU's dense (not 2:4-sparse) peak TFLOP/s from its vendor's data sheet: tensor cores in bf16 (None: no
    bf16 hardware) and fp16 (with fp32 accumulation, as training runs them), in TF32 (None: no TF32), and plain fp32
    (no tensor cores)."""

    bf16: float | None
    fp16: float
    tf32: float | None
    fp32: float


# Matched in this order on `torch.cuda.get_device_name()` as it reads ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe",
# "NVIDIA H100 NVL", "NVIDIA H200", "NVIDIA GH200 480GB", "NVIDIA A100-SXM4-80GB", "NVIDIA L40S", "Tesla T4" ...), each
# pattern whole words, case-insensitive: "A10" is not "A10G" or "A100", "H200" is not "GH200" or "H20". Data sheets
# print sparse figures for the tensor cores of Hopper and later (marked *); those are halved here.
GPU_PEAK_TFLOPS = (
    # H100 NVL and H200 NVL product briefs: BF16 1671*, TF32 835*, FP32 60
    (r"H100 NVL|H200 NVL", GpuPeaks(bf16=835.5, fp16=835.5, tf32=417.5, fp32=60)),
    # H100 data sheet, PCIe column (H800 PCIe: the same compute): BF16 1513*, TF32 756*, FP32 51
    (r"H100 PCIe|H800 PCIe", GpuPeaks(bf16=756.5, fp16=756.5, tf32=378, fp32=51)),
    # H100 data sheet, SXM column: BF16 1979*, TF32 989*, FP32 67; the H200 (SXM), H800 (SXM) and GH200 data
    # sheets give the same compute
    (r"H100|H200|H800|GH200", GpuPeaks(bf16=989.5, fp16=989.5, tf32=494.5, fp32=67)),
    # GB200 NVL72 data sheet, per GPU: BF16 5 P*, TF32 2.5 P*, FP32 80
    (r"GB200", GpuPeaks(bf16=2500, fp16=2500, tf32=1250, fp32=80)),
    # HGX B200 data sheet, per GPU: BF16 4.5 P*, TF32 2.2 P*, FP32 75
    (r"B200", GpuPeaks(bf16=2250, fp16=2250, tf32=1100, fp32=75)),
    # A100 data sheet (SXM and PCIe, 40 and 80 GB alike; A800 the same compute): BF16 312, TF32 156, FP32 19.5
    (r"A100|A800", GpuPeaks(bf16=312, fp16=312, tf32=156, fp32=19.5)),
    # L40S data sheet: BF16 362, TF32 183, FP32 91.6
    (r"L40S", GpuPeaks(bf16=362, fp16=362, tf32=183, fp32=91.6)),
    # L40 data sheet: BF16 181, TF32 90.5, FP32 90.5
    (r"L40", GpuPeaks(bf16=181, fp16=181, tf32=90.5, fp32=90.5)),
    # L4 data sheet: BF16 242*, TF32 120*, FP32 30.3 (its sparse figures, halved)
    (r"L4", GpuPeaks(bf16=121, fp16=121, tf32=60, fp32=30.3)),
    # A10 data sheet: BF16 125, TF32 62.5, FP32 31.2. (AWS's A10G has no NVIDIA data sheet: not listed.)
    (r"A10", GpuPeaks(bf16=125, fp16=125, tf32=62.5, fp32=31.2)),
    # Ada Lovelace architecture whitepaper, GeForce RTX 4090: BF16 and FP16 with FP32 accumulate 165.2, TF32 82.6,
    # FP32 82.6 (not the RTX 4090 D, a cut-down one)
    (r"RTX 4090(?! D\b)", GpuPeaks(bf16=165.2, fp16=165.2, tf32=82.6, fp32=82.6)),
    # V100 data sheet: tensor cores in FP16 only (SXM2 125, PCIe 112), FP32 15.7 / 14; no bf16, no TF32
    (r"V100-SXM2", GpuPeaks(bf16=None, fp16=125, tf32=None, fp32=15.7)),
    (r"V100-PCIE", GpuPeaks(bf16=None, fp16=112, tf32=None, fp32=14)),
    # T4 data sheet: FP16 tensor cores 65, FP32 8.1; no bf16, no TF32
    (r"T4", GpuPeaks(bf16=None, fp16=65, tf32=None, fp32=8.1)),
)


def gpu_peaks(device_name: str) -> GpuPeaks | None:
    """The data-sheet peaks of the GPU that `torch.cuda.get_device_name()` calls `device_name`; None if unknown."""
    for pattern, peaks in GPU_PEAK_TFLOPS:
        if re.search(rf"\b(?:{pattern})\b", device_name, flags=re.IGNORECASE):
            return peaks
    return None


def peak_tflops(peaks: GpuPeaks, dtype: torch.dtype, tf32: bool) -> float | None:
    """The peak of the unit that matmuls in `dtype` run on: tensor cores for bf16 and fp16, TF32 tensor cores for
    fp32 when `tf32` (torch lets fp32 matmuls use them) and the GPU has them, else plain fp32. None for bf16 on a
    GPU that only emulates it."""
    if dtype == torch.bfloat16:
        return peaks.bf16
    if dtype == torch.float16:
        return peaks.fp16
    return peaks.tf32 if tf32 and peaks.tf32 else peaks.fp32


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
    bf16: bool = False  # bf16 in hardware (CUDA compute capability 8.0 and later), not emulated
    name: str | None = None  # torch.cuda.get_device_name(), e.g. "NVIDIA H100 80GB HBM3"
    count: int = 1  # GPUs this process sees


def probe_device() -> DeviceReport:
    device = default_device()
    if device.type != "cuda":
        return DeviceReport(device.type)
    # torch.cuda.is_bf16_supported() alone also says yes where bf16 is emulated (T4, V100): slower than fp32
    return DeviceReport("cuda", bf16=torch.cuda.is_bf16_supported(including_emulation=False),
                        name=torch.cuda.get_device_name(), count=torch.cuda.device_count())


def precision_summary(bf16: bool, fp16: bool, device: DeviceReport) -> str:
    """Which precision a run trains in, and why, for its start-up line."""
    gpu = device.name or "this GPU"
    if fp16:
        return "fp16 autocast with loss scaling, fp32 weights (--fp16)"
    if bf16 and (device.type != "cuda" or device.bf16):
        return "bf16 autocast, fp32 weights" + (f" ({gpu} has bf16 tensor cores)" if device.type == "cuda" else "")
    if bf16:
        return f"bf16 autocast, fp32 weights, as asked: {gpu} only emulates bf16 (slow; --fp16 is its fast path)"
    if device.type != "cuda":
        return f"fp32 (bf16 autocast is the default on GPUs that have it; --bf16 to ask for it on {device.type})"
    if device.bf16:
        return f"fp32, as asked (--bf16 false; {gpu} has bf16 tensor cores)"
    return f"fp32: {gpu} has no bf16 hardware (--fp16 for fp16 autocast with loss scaling)"


def peak_summary(peak_flops: float | None, device: DeviceReport) -> str:
    """The MFU part of the start-up line: the peak MFU is measured against, or the one line on how to get one."""
    if peak_flops:
        return f"MFU against {peak_flops / 1e12:g} TFLOP/s"
    if device.type == "cuda":
        return f"no MFU: no data-sheet peak known for {device.name!r} in this precision (pass --peak_tflops)"
    return f"no MFU on {device.type} without --peak_tflops"


def unused_gpus_hint(device: DeviceReport, world_size: int) -> str | None:
    """Several GPUs and a single process (`python run_pretrain.py`): the run trains on one of them, and says how to
    train on all. The Trainer's own answer, nn.DataParallel over every visible GPU, would multiply the batch by their
    number behind the recipe's back, and is slower than DDP besides."""
    if device.type != "cuda" or device.count < 2 or world_size > 1:
        return None
    return (f"{device.count} GPUs visible, training on one: `torchrun --nproc_per_node {device.count} run_pretrain.py "
            "...` trains on all of them (DDP; the global batch grows with them)")


def device_peak_flops(device, dtype=torch.bfloat16, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of `device` for matmuls in `dtype`, for MFU: `override_tflops` if given, else a known GPU's
    data-sheet peak (`GPU_PEAK_TFLOPS`). None when unknown, which includes every CPU: a CPU's attainable peak depends
    on its cores, vector units and load, and a peak guessed from a short probe at start-up can be beaten by the run
    (MFU above 100%)."""
    if override_tflops:
        return override_tflops * 1e12
    device = torch.device(device)
    if device.type != "cuda":
        return None
    peaks = gpu_peaks(torch.cuda.get_device_name(device))
    tflops = peaks and peak_tflops(peaks, dtype, tf32=torch.get_float32_matmul_precision() != "highest")
    return tflops * 1e12 if tflops else None
