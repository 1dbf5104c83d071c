"""The device decisions (pretraining/devices.py), each called with what a GPU reports: the data-sheet peaks matched on
real `torch.cuda.get_device_name()` strings, the precision and its reason, one GPU per process.

    python -m pytest tests/unit/test_devices.py -q
"""

import pytest
import torch

from pretraining.arguments import parse_args
from pretraining.devices import (DeviceReport, device_peak_flops, gpu_peaks, peak_summary, peak_tflops,
                                 precision_summary, unused_gpus_hint)

# torch.cuda.get_device_name() as each GPU answers it -> dense (bf16, TF32, fp32) TFLOP/s; None: no such hardware
REAL_NAMES = {
    "NVIDIA H100 80GB HBM3": (989.5, 494.5, 67),  # SXM
    "NVIDIA H100 PCIe": (756.5, 378, 51),
    "NVIDIA H100 NVL": (835.5, 417.5, 60),
    "NVIDIA H200": (989.5, 494.5, 67),  # SXM
    "NVIDIA H200 NVL": (835.5, 417.5, 60),
    "NVIDIA H800": (989.5, 494.5, 67),
    "NVIDIA H800 PCIe": (756.5, 378, 51),
    "NVIDIA GH200 480GB": (989.5, 494.5, 67),
    "NVIDIA B200": (2250, 1100, 75),
    "NVIDIA GB200": (2500, 1250, 80),
    "NVIDIA A100-SXM4-80GB": (312, 156, 19.5),
    "NVIDIA A100-SXM4-40GB": (312, 156, 19.5),
    "NVIDIA A100-PCIE-40GB": (312, 156, 19.5),
    "NVIDIA A100 80GB PCIe": (312, 156, 19.5),
    "NVIDIA A800-SXM4-80GB": (312, 156, 19.5),
    "NVIDIA L40S": (362, 183, 91.6),
    "NVIDIA L40": (181, 90.5, 90.5),
    "NVIDIA L4": (121, 60, 30.3),
    "NVIDIA A10": (125, 62.5, 31.2),
    "NVIDIA GeForce RTX 4090": (165.2, 82.6, 82.6),
    "Tesla V100-SXM2-16GB": (None, None, 15.7),
    "Tesla V100-PCIE-32GB": (None, None, 14),
    "Tesla T4": (None, None, 8.1),
}
# names that contain a known one but are other GPUs: no peak rather than a wrong one
UNKNOWN_NAMES = ["NVIDIA A10G", "NVIDIA H20", "NVIDIA GeForce RTX 4090 D", "NVIDIA RTX 6000 Ada Generation",
                 "NVIDIA GeForce RTX 3090"]


@pytest.mark.parametrize("name", list(REAL_NAMES))
def test_each_gpu_gets_its_data_sheet_dense_peak(name):
    bf16, tf32, fp32 = REAL_NAMES[name]
    peaks = gpu_peaks(name)
    assert peak_tflops(peaks, torch.bfloat16, tf32=True) == bf16
    assert peak_tflops(peaks, torch.float32, tf32=True) == (tf32 or fp32)  # no TF32 hardware: plain fp32
    assert peak_tflops(peaks, torch.float32, tf32=False) == fp32
    assert peak_tflops(peaks, torch.float16, tf32=True) >= (bf16 or 0)  # fp16 tensor cores, on every one of them


@pytest.mark.parametrize("name", UNKNOWN_NAMES)
def test_a_gpu_not_in_the_table_gets_no_peak_and_one_line_asking_for_it(name):
    assert gpu_peaks(name) is None
    line = peak_summary(None, DeviceReport("cuda", bf16=True, name=name))
    assert line == f"no MFU: no data-sheet peak known for {name!r} in this precision (pass --peak_tflops)"


def test_the_peak_in_the_start_up_line_and_the_override():
    assert peak_summary(989.5e12, DeviceReport("cuda", bf16=True, name="NVIDIA H200")) == "MFU against 989.5 TFLOP/s"
    assert peak_summary(None, DeviceReport("cpu")) == "no MFU on cpu without --peak_tflops"
    assert device_peak_flops("cpu", torch.float32) is None  # no CPU is in the table
    assert device_peak_flops("cpu", torch.float32, override_tflops=2.5) == 2.5e12


def test_precision_follows_the_hardware_and_says_why():
    h100 = DeviceReport("cuda", bf16=True, name="NVIDIA H100 80GB HBM3")
    t4 = DeviceReport("cuda", bf16=False, name="Tesla T4")
    assert precision_summary(True, False, h100) == ("bf16 autocast, fp32 weights (NVIDIA H100 80GB HBM3 has bf16 "
                                                    "tensor cores)")
    assert precision_summary(False, False, h100) == ("fp32, as asked (--bf16 false; NVIDIA H100 80GB HBM3 has bf16 "
                                                     "tensor cores)")
    assert precision_summary(False, False, t4) == ("fp32: Tesla T4 has no bf16 hardware (--fp16 for fp16 autocast "
                                                   "with loss scaling)")
    assert precision_summary(True, False, t4) == ("bf16 autocast, fp32 weights, as asked: Tesla T4 only emulates bf16 "
                                                  "(slow; --fp16 is its fast path)")
    assert precision_summary(False, True, t4) == "fp16 autocast with loss scaling, fp32 weights (--fp16)"
    assert precision_summary(False, False, DeviceReport("cpu")) == ("fp32 (bf16 autocast is the default on GPUs that "
                                                                    "have it; --bf16 to ask for it on cpu)")
    assert precision_summary(True, False, DeviceReport("cpu")) == "bf16 autocast, fp32 weights"


@pytest.mark.parametrize("count, world_size, expected", [
    (8, 1, "8 GPUs visible, training on one: `torchrun --nproc_per_node 8 run_pretrain.py ...` trains on all of them "
           "(DDP; the global batch grows with them)"),
    (2, 1, "2 GPUs visible, training on one: `torchrun --nproc_per_node 2 run_pretrain.py ...` trains on all of them "
           "(DDP; the global batch grows with them)"),
    (1, 1, None),  # one GPU: nothing to say
    (8, 8, None),  # under torchrun: every GPU has its process
])
def test_several_gpus_without_a_launcher_train_on_one_and_say_how_to_use_all(count, world_size, expected):
    assert unused_gpus_hint(DeviceReport("cuda", bf16=True, name="NVIDIA H100 80GB HBM3", count=count),
                            world_size) == expected


def test_one_process_never_takes_more_than_one_gpu():
    """n_gpu > 1 is what makes the Trainer wrap the model in nn.DataParallel; the app's arguments pin it to at most 1
    (0 on a CPU), as the Trainer itself does for model parallelism."""
    args = parse_args([], DeviceReport("cpu"))[2]
    assert args.n_gpu == 0
    args._n_gpu = 8  # what TrainingArguments finds on an 8-GPU machine without a launcher
    args.__post_init__()
    assert args.n_gpu == 1 and args.train_batch_size == args.per_device_train_batch_size
