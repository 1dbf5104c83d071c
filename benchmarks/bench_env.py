"""Stage 0 of the one-run GPU check: the environment. What the machine has, whether the app imports there, and
the two ceilings the later stages are measured against, each printed as it comes:

  1. versions: python, torch (with its CUDA and cuDNN), the app's libraries; the device, its memory and compute
     capability;
  2. imports: every module the app loads (the root's commands and model files, every module of `pretraining`) in one
     line, or each failure with its one-line reason; the packages used for one feature each, present or absent;
  3. the matmul ceiling: one 8192 x 8192 x 8192 bf16 matmul, TFLOP/s next to the GPU's data-sheet peak;
  4. attention forward + backward at the app's shape (SmolLM2-135M, 8 x 2048 tokens, GQA) for torch's default
     SDPA choice (and which backend that is) and for each backend forced: time and TFLOP/s, or why it cannot run.

    python benchmarks/bench_env.py --results /tmp/rows.jsonl   # on the GPU: well under a minute
    python benchmarks/bench_env.py --cpu-smoke                 # tiny sizes on CPU (a test runs it): seconds

`--results PATH` appends one JSON row for the environment and one per attention variant (default, flash, cudnn,
efficient, math); the check's final table and its MFU against the measured matmul are read from them. A part that
fails is reported (a null in its row, a note) and the next part runs, so the exit status is 0; only a bug in this
script raises.
"""

import argparse
import contextlib
import importlib
import importlib.metadata as metadata
import importlib.util
import os
import pkgutil
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the repo root

from pretraining.devices import default_device, gpu_peaks  # noqa: E402
from pretraining.jsonl import append_jsonl  # noqa: E402

PACKAGES = ("torch", "transformers", "accelerate", "datasets", "torchdata", "tokenizers", "huggingface_hub", "pyarrow",
            "numpy", "safetensors")
# the root's modules that the app runs or imports: the training command, its callbacks, the model files, the
# launcher for several GPUs, and the corpus the check's training stages read
APP_MODULES = ("run_pretrain", "callbacks", "configuration_smollm2", "modeling_smollm2", "smollm2_ops", "launch",
               "demo_corpus")
# each imported by the app only for one feature: .gguf weights, --report_to tensorboard, training curves, --eval_tasks
OPTIONAL = ("gguf", "tensorboard", "matplotlib", "lm_eval")

MATMUL_N = 8192  # large enough for cuBLAS to reach the tensor cores' ceiling
SMOKE_MATMUL_N = 256
WARMUP = 3  # calls before timing: cuBLAS's heuristics, cuDNN's graph building, the allocator's first blocks


@dataclass(frozen=True)
class AttentionShape:
    batch: int
    heads: int  # query heads
    kv_heads: int  # each shared by heads // kv_heads query heads (GQA)
    seq: int
    head_dim: int

    def flops(self) -> float:
        """FLOPs of one causal forward + backward, FlashAttention's convention: the forward's two matmuls (QK^T, PV)
        at 2 * batch * heads * seq^2 * head_dim each, halved for the causal mask; the backward 2.5 times the
        forward. The math backend computes the masked half too: this counts the useful work, the same for all."""
        forward = 2 * self.batch * self.heads * self.seq**2 * self.head_dim
        return 3.5 * forward


# SmolLM2-135M (9 heads of 64 over 3 KV heads) at the recipe's 8 sequences x 2048 tokens
APP_ATTENTION = AttentionShape(batch=8, heads=9, kv_heads=3, seq=2048, head_dim=64)
SMOKE_ATTENTION = AttentionShape(batch=1, heads=9, kv_heads=3, seq=128, head_dim=64)

# forced one at a time after torch's default choice, in this order; the keys name the rows
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
# the aten op each fused backend dispatches to, as torch.profiler names it; none of them: the math path ran
BACKEND_OPS = {
    "aten::_scaled_dot_product_flash_attention": SDPBackend.FLASH_ATTENTION.name,
    "aten::_scaled_dot_product_flash_attention_for_cpu": SDPBackend.FLASH_ATTENTION.name,
    "aten::_scaled_dot_product_cudnn_attention": SDPBackend.CUDNN_ATTENTION.name,
    "aten::_scaled_dot_product_efficient_attention": SDPBackend.EFFICIENT_ATTENTION.name,
}


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="on the CPU at tiny sizes (a 256 fp32 matmul, attention at 1 x 128 tokens): the code "
                             "path, not the numbers")
    parser.add_argument("--results", help="append the result rows (JSON Lines) to this file")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per measurement, after warm-up (median)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, not {args.repeats}")
    return args


def one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"


def versions() -> dict:
    """Versions by package metadata (None: not installed), and the CUDA and cuDNN torch runs on (None: a CPU
    build)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["cuda"] = torch.version.cuda
    try:
        cudnn = torch.backends.cudnn.version()
        found["cudnn"] = str(cudnn) if cudnn else None
    except RuntimeError as error:  # a cuDNN other than the one torch was built against
        print(f"cuDNN: failed: {one_line(error)}", flush=True)
        found["cudnn"] = None
    torch_build = ", ".join(f"{label} {found[key]}" for label, key in (("CUDA", "cuda"), ("cuDNN", "cudnn"))
                            if found[key])
    shown = [f"{name} {found[name] or 'missing'}" + (f" ({torch_build})" if name == "torch" and torch_build else "")
             for name in ("python", *PACKAGES)]
    print("versions: " + ", ".join(shown), flush=True)
    return found


def describe_device(device: torch.device) -> str:
    """Prints the device, its memory and compute capability; returns its name (`torch.cuda.get_device_name()`, the
    key of its data-sheet peaks), or the device type."""
    if device.type != "cuda":
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        print(f"device: {device.type}, {memory:.1f} GiB memory, no compute capability"
              + ("" if torch.cuda.is_available() else " (torch.cuda.is_available() is False)"), flush=True)
        return device.type
    try:
        name = torch.cuda.get_device_name(device)
        properties = torch.cuda.get_device_properties(device)
    except RuntimeError as error:  # a driver that lists a GPU it cannot open
        print(f"device: cuda: failed: {one_line(error)}", flush=True)
        return "cuda"
    print(f"device: {name}, {properties.total_memory / 2**30:.1f} GiB memory, compute capability "
          f"{properties.major}.{properties.minor}", flush=True)
    return name


def check_imports() -> list[str]:
    """Imports every module the app loads; prints one line, or each failure; returns the modules that failed."""
    start = time.perf_counter()
    # walked by path, not through `pretraining.__path__`: the package itself may be what fails. A subpackage that
    # fails is walked no further (onerror); the loop below imports it again and reports why.
    package = pkgutil.walk_packages([os.path.join(ROOT, "pretraining")], "pretraining.", onerror=lambda name: None)
    modules = [*APP_MODULES, "pretraining", *(info.name for info in package)]
    failures = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as error:  # whatever a module raises while it imports is that module's failure
            failures[name] = one_line(error)
    seconds = time.perf_counter() - start
    if failures:
        print(f"imports: {len(failures)} of {len(modules)} modules failed ({seconds:.1f} s):", flush=True)
        for name, reason in failures.items():
            print(f"  {name}: {reason}", flush=True)
    else:
        print(f"imports: {len(modules)} modules ok ({seconds:.1f} s)", flush=True)
    # looked up, not imported: the app imports them only for their feature, and lm_eval alone takes seconds
    print("optional: " + ", ".join(f"{name} {'present' if importlib.util.find_spec(name) else 'absent'}"
                                   for name in OPTIONAL), flush=True)
    return list(failures)


def median_seconds(fn, device: torch.device, repeats: int) -> float:
    """Median time of `fn()` over `repeats` calls after WARMUP calls. On CUDA each call is timed between CUDA events,
    which time the GPU's work rather than the kernel launches."""
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_ceiling(device: torch.device, n: int, dtype: torch.dtype, repeats: int) -> float | None:
    """TFLOP/s of one n x n x n matmul (2 n^3 FLOPs); None if it fails (printed)."""
    try:
        # random data, never zeros: a GPU draws less power on zeros and holds clocks that training never gets
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        return 2 * n**3 / median_seconds(lambda: a @ b, device, repeats) / 1e12
    except RuntimeError as error:  # torch's errors (out of memory, CUDA, no kernel) are all RuntimeErrors
        print(f"matmul: failed: {one_line(error)}", flush=True)
        return None


def backend_that_ran(step) -> str:
    """Which SDPA backend `step()` dispatches to, from the aten ops a profile of it records (on the CPU side, which
    names the op without the cost of tracing the GPU)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    names = {event.name for event in prof.events()}
    return next((backend for op, backend in BACKEND_OPS.items() if op in names), SDPBackend.MATH.name)


def attention(variant: str, backend: SDPBackend | None, shape: AttentionShape, device: torch.device,
              repeats: int) -> dict:
    """The result row of causal GQA attention forward + backward in bf16 with `backend` forced (None: torch's
    default choice, and which backend that is), or why it cannot run."""
    row = {"stage": f"attention, {variant}", "ms": None, "tflops": None,
           "backend": backend.name if backend is not None else None, "note": None}
    forced = sdpa_kernel(backend) if backend is not None else contextlib.nullcontext()
    with warnings.catch_warnings(record=True) as caught, forced:
        warnings.simplefilter("always")
        try:
            q = torch.randn(shape.batch, shape.heads, shape.seq, shape.head_dim, device=device, dtype=torch.bfloat16,
                            requires_grad=True)  # (batch, heads, seq, head_dim)
            k, v = (torch.randn(shape.batch, shape.kv_heads, shape.seq, shape.head_dim, device=device,
                                dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
            grad_output = torch.randn_like(q)

            def step():
                output = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                # gradients returned, not accumulated into .grad: no extra add per call
                return torch.autograd.grad(output, (q, k, v), grad_output)

            if backend is None:
                row["backend"] = backend_that_ran(step)
            seconds = median_seconds(step, device, repeats)
            row.update(ms=seconds * 1e3, tflops=shape.flops() / seconds / 1e12)
        except RuntimeError as error:
            # on CUDA the error only says "No available kernel"; the warnings torch gives just before it say why
            reasons = dict.fromkeys(str(warning.message).split(" (Triggered internally")[0].strip()
                                    for warning in caught)
            row["note"] = " ".join([one_line(error), *reasons])
    return row


def attention_line(row: dict) -> str:
    if row["note"]:
        return f"{row['stage']}: cannot run: {row['note']}"
    ran = f" ({row['backend']} ran)" if row["stage"] == "attention, default" else ""
    return f"{row['stage']}: {row['ms']:.4g} ms fwd+bwd, {row['tflops']:.4g} TFLOP/s{ran}"


def write_row(results: str | None, row: dict) -> None:
    if results:
        append_jsonl(results, row)


def main(argv=None) -> None:
    args = parse(argv)
    device = torch.device("cpu") if args.cpu_smoke else default_device()
    found = versions()
    name = describe_device(device)
    failed = check_imports()
    variants = {"default": None, **BACKENDS}
    if device.type != "cuda" and not args.cpu_smoke:
        # still a useful report (versions, imports) on a machine whose GPU does not answer
        reason = "skipped: no CUDA GPU (--cpu-smoke runs this at tiny sizes on the CPU)"
        print(f"matmul, attention: {reason}", flush=True)
        write_row(args.results, {"stage": "environment", "device": name, "matmul_tflops": None, "sheet_tflops": None,
                                 "imports_failed": failed, "versions": found})
        for variant in variants:
            write_row(args.results, {"stage": f"attention, {variant}", "ms": None, "tflops": None, "backend": None,
                                     "note": reason})
        return

    if args.cpu_smoke:
        n, dtype, dtype_name = SMOKE_MATMUL_N, torch.float32, "fp32"
    else:
        n, dtype, dtype_name = MATMUL_N, torch.bfloat16, "bf16"
    measured = matmul_ceiling(device, n, dtype, args.repeats)
    peaks = gpu_peaks(name) if device.type == "cuda" else None
    sheet = peaks.bf16 if peaks else None
    if measured is not None:
        if device.type != "cuda":
            against = "no data-sheet peak on the CPU"
        elif sheet:
            against = f"data-sheet dense bf16 peak {sheet:g} TFLOP/s, {measured / sheet:.0%} of it"
        else:
            against = f"data-sheet dense bf16 peak unknown for {name!r}"
        print(f"matmul: {n} x {n} x {n} {dtype_name}: {measured:.4g} TFLOP/s ({against})", flush=True)
    write_row(args.results, {"stage": "environment", "device": name, "matmul_tflops": measured, "sheet_tflops": sheet,
                             "imports_failed": failed, "versions": found})

    shape = SMOKE_ATTENTION if args.cpu_smoke else APP_ATTENTION
    print(f"attention fwd+bwd: q ({shape.batch}, {shape.heads}, {shape.seq}, {shape.head_dim}), k and v "
          f"({shape.batch}, {shape.kv_heads}, {shape.seq}, {shape.head_dim}), bf16, causal, GQA; "
          f"{shape.flops() / 1e9:.4g} GFLOP each", flush=True)
    for variant, backend in variants.items():
        row = attention(variant, backend, shape, device, args.repeats)
        print(attention_line(row), flush=True)
        write_row(args.results, row)


if __name__ == "__main__":
    main()
