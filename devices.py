"""The device to run on when none is named: one that really works on this machine.

    from devices import default_device
    model.to(default_device())
"""

import torch


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
