"""Training-step, generation and memory benchmark: SmolLM2ForCausalLM against transformers' LlamaForCausalLM.

Both models get the same weights (a state-dict copy), Llama its default attention (SDPA), and both the Trainer's
default optimizer (fused AdamW). Ours runs as the training app builds it, with `use_speed_ops=True` (smollm2_ops.py);
`--without rmsnorm rope swiglu loss` puts named ops back on the plain path (`--without all`: the plain model), to see
what each op pays for. Speed is timed interleaved in one process (ours, Llama, ours, Llama, ...) after
warm-up steps, so that drift in a shared machine's load hits both alike, and the median is reported.

    python benchmarks/bench_model.py                           # SmolLM2-135M, 8 x 256 tokens, CPU fp32 (minutes)
    python benchmarks/bench_model.py --batch_size 1 --skip memory  # one sequence: the matmuls' least efficient shape
    python benchmarks/bench_model.py --config tiny --repeats 3  # a few seconds
    python benchmarks/bench_model.py --skip train generate --batch_size 4 --block_size 2048 --layers 2  # memory
    python benchmarks/bench_model.py --batch_size 8 --block_size 2048 --bf16_autocast --skip memory generate
                                                      # on a GPU, as the app trains: fp32 weights under bf16 autocast
    python benchmarks/bench_model.py --layers 6 --skip generate --without rope  # one op's share of speed and memory

Reported per model: median step time (forward + backward + AdamW step), tokens/s, MFU, the step's extra memory,
greedy generation tokens/s, and ours against Llama: speed as the median of per-round ratios (above 1: ours is
faster), memory as ours / Llama (below 1: ours needs less).
MFU = tokens/s x FLOPs/token (PaLM count, pretraining/throughput.py) / peak FLOP/s: a named GPU's dense bf16 peak
(pretraining/devices.py), or on CPU the best rate of a 2048 x 2048 matmul timed in the same interleaved rounds
as the steps, against each model's best step: a peak is what the machine does when nothing else runs, and a shared
machine's load only ever slows a run down, so best against best estimates the quiet machine on both sides (a median
against a median let a slow probe push MFU above 100%); --peak_tflops overrides.

On CPU one more step of each model runs under torch.profiler, to split its time into matmuls, attention, the
optimizer and everything else. Both models run the same matmuls, attention and optimizer, so Llama's step time over
its time without the "other" part bounds the speed ratio that any rewrite of the elementwise work could reach.
"""

import argparse
import gc
import multiprocessing
import os
import statistics
import sys
import threading
import time

import torch
from torch.profiler import profile
from transformers import LlamaConfig, LlamaForCausalLM


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root, also in children

from configuration_smollm2 import SmolLM2Config  # noqa: E402
import modeling_smollm2  # noqa: E402
import smollm2_ops  # noqa: E402
from modeling_smollm2 import SmolLM2ForCausalLM  # noqa: E402
from pretraining.devices import default_device, device_peak_flops  # noqa: E402
from pretraining.jsonl import append_jsonl  # noqa: E402
from pretraining.throughput import flops_per_token  # noqa: E402


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# SmolLM2Config fields that LlamaConfig does not have (or must not inherit, like model_type)
NOT_LLAMA_FIELDS = ("model_type", "architectures", "auto_map", "transformers_version", "dtype")
SPEED_OPS = ("rmsnorm", "rope", "swiglu", "loss")


def matmul_probe(size: int = 2048, dtype=torch.float32):
    """A square matmul to time, and its FLOPs: the practical peak that CPU MFU is measured against."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    return (lambda: torch.matmul(a, b)), 2 * size**3
# Profiler op-name prefixes per kind of work; every other op counts as "other".
OP_KINDS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "attention": ("aten::_scaled_dot_product", "aten::_flash_attention", "aten::_efficient_attention"),
    "optimizer": ("aten::_fused_adam", "aten::_foreach"),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=["135m", "tiny"], default="135m", help="model preset")
    parser.add_argument("--layers", type=int, help="override num_hidden_layers (quick runs, memory at long blocks)")
    parser.add_argument("--batch_size", type=int, default=8, help="sequences per step (the recipe's 8)")
    parser.add_argument("--block_size", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="parameter and compute dtype")
    parser.add_argument("--bf16_autocast", action="store_true",
                        help="forward under bf16 autocast (with --dtype fp32: the app's --bf16, fp32 master weights)")
    parser.add_argument("--device", default="auto", help="auto (a GPU that works, else MPS, else CPU), cpu, cuda, cuda:1 ...")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per model (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions per model first")
    parser.add_argument("--prompt_tokens", type=int, default=32, help="generation: prompt length (batch 1)")
    parser.add_argument("--new_tokens", type=int, default=64, help="generation: greedy tokens generated")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd training steps (GPU)")
    parser.add_argument("--gradient_checkpointing", action="store_true", help="recompute layers in backward (both)")
    parser.add_argument("--peak_tflops", type=float, help="device peak for MFU, instead of the table/measurement")
    parser.add_argument("--skip", nargs="*", default=[], choices=["train", "generate", "memory"], help="parts to skip")
    parser.add_argument("--without", nargs="*", default=[], choices=[*SPEED_OPS, "all"],
                        help="speed ops of ours to replace by the plain path (all: use_speed_ops=False)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", help="append the training-step figures of both models to this JSONL file "
                                          "(benchmarks/device_check.py reads it)")
    return parser.parse_args(argv)


def plain_rms_norm(hidden_states, weight, eps):
    norm = modeling_smollm2.SmolLM2RMSNorm(weight.shape[0], eps)
    norm.weight = weight
    return norm(hidden_states)


def plain_causal_lm_loss(hidden_states, weight, labels, chunk_size, num_items_in_batch=None, **kwargs):
    from transformers.loss.loss_utils import ForCausalLMLoss

    logits = hidden_states @ weight.t()
    return ForCausalLMLoss(logits, labels, weight.shape[0], num_items_in_batch=num_items_in_batch, **kwargs)


def disable_speed_ops(names):
    """Benchmark-only ablation: the named ops of smollm2_ops take the plain path (in this process and children)."""
    if "rmsnorm" in names:
        smollm2_ops.rms_norm = plain_rms_norm
    if "rope" in names:
        smollm2_ops.apply_rotary_pos_emb = modeling_smollm2.apply_rotary_pos_emb
    if "swiglu" in names:
        smollm2_ops.swiglu_applies = lambda mlp: False
    if "loss" in names:
        smollm2_ops.causal_lm_loss = plain_causal_lm_loss


def build_config(args) -> SmolLM2Config:
    # as the training app builds it
    config = SmolLM2Config.tiny(use_speed_ops=True) if args.config == "tiny" else SmolLM2Config(use_speed_ops=True)
    if "all" in args.without:
        config.use_speed_ops = False
    if args.layers:
        config.num_hidden_layers = args.layers
    return config


def build_model(name: str, config: SmolLM2Config, device, dtype, state_dict=None):
    """`name` is "ours" or "llama"; the Llama twin has the same shapes and, given `state_dict`, the same weights."""
    if name == "ours":
        model = SmolLM2ForCausalLM(config)
    else:
        llama_config = LlamaConfig(**{k: v for k, v in config.to_dict().items() if k not in NOT_LLAMA_FIELDS})
        model = LlamaForCausalLM(llama_config)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model.to(device=device, dtype=dtype)


def prepare_for_training(model, args):
    model.train()
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    return model


def make_optimizer(model) -> torch.optim.Optimizer:
    # The Trainer's default optim ("adamw_torch_fused"); the slower foreach AdamW would dilute the ratio.
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)


def train_step(model, optimizer, input_ids, autocast=False):
    # the forward under bf16 autocast, backward and optimizer outside it: what the Trainer's --bf16 does (accelerate)
    with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def model_matmuls(config: SmolLM2Config, tokens: int, dtype) -> dict:
    """The matmuls of one training step at the model's own shapes, alone: {"layer": (run, FLOPs, count), "head": ...}.

    Per linear layer its forward (x @ W.T), input-gradient (g @ W) and weight-gradient (g.T @ x) products; the LM
    head in loss_chunk_size rows at a time, as the chunked loss runs it. A decoder layer runs num_hidden_layers
    times per step. Their best rate is the matmul rate that the step can at most reach: on a few CPU cores the
    model's short inner dimensions (hidden 576) run well below a square 2048 matmul."""
    hidden, inner = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * config.head_dim
    layer = [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden), (inner, hidden), (inner, hidden),
             (hidden, inner)]  # (out, in) of q, k, v, o, gate, up, down
    chunk = min(config.loss_chunk_size, tokens)
    head = [(config.vocab_size, hidden)] * (tokens // chunk)

    def products(shapes, rows):
        weights = [torch.randn(out, inp, dtype=dtype) for out, inp in shapes]
        inputs = {n: torch.randn(rows, n, dtype=dtype) for shape in shapes for n in shape}

        def run():
            for weight in weights:
                out, inp = weight.shape
                torch.mm(inputs[inp], weight.t())  # forward
                torch.mm(inputs[out], weight)  # gradient of the input
                torch.mm(inputs[out].t(), inputs[inp])  # gradient of the weight
        return run, sum(3 * 2 * rows * out * inp for out, inp in shapes)

    return {"layer": (*products(layer, tokens), config.num_hidden_layers), "head": (*products(head, chunk), 1)}


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(steps: dict, device, warmup: int, repeats: int) -> dict:
    """Seconds per call of each callable in `steps`, one call of each per round, the order reversed every other
    round, so that drift in the machine's load hits every one alike."""
    times = {name: [] for name in steps}
    for repeat in range(warmup + repeats):
        order = list(steps.items()) if repeat % 2 == 0 else list(reversed(steps.items()))
        for name, step in order:
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            if repeat >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cuda_step_memory(model, optimizer, input_ids, autocast) -> int:
    """Peak bytes allocated during one training step above what was allocated before it."""
    # AdamW's moments exist afterwards; the step's memory excludes them
    train_step(model, optimizer, input_ids, autocast)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(input_ids.device)
    before = torch.cuda.memory_allocated(input_ids.device)
    train_step(model, optimizer, input_ids, autocast)
    return torch.cuda.max_memory_allocated(input_ids.device) - before


def cpu_step_memory_child(args, name, queue):
    """Runs in a fresh process: peak resident memory during one training step above the resident memory before it.

    A process of its own, so that the other model's tensors and allocator state do not blur the numbers. The parent
    sets MALLOC_MMAP_THRESHOLD_ so that every tensor above 64 KiB is its own mmap, returned to the OS when freed:
    resident memory then follows the live tensors. A full-size warm step first puts the kernels' one-time buffers
    (BLAS packing, thread pools) into the baseline; the measured step is sampled every 0.2 ms by a thread, as
    ru_maxrss would still hold the warm step's peak.
    """
    torch.manual_seed(args.seed)
    disable_speed_ops(args.without)
    config = build_config(args)
    model = prepare_for_training(build_model(name, config, torch.device("cpu"), DTYPES[args.dtype]), args)
    optimizer = make_optimizer(model)
    input_ids = torch.randint(0, config.vocab_size, (args.batch_size, args.block_size))
    train_step(model, optimizer, input_ids, args.bf16_autocast)
    gc.collect()
    before = resident_bytes()
    peak = before
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, resident_bytes())
            time.sleep(0.0002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    train_step(model, optimizer, input_ids, args.bf16_autocast)
    done.set()
    sampler.join()
    queue.put(peak - before)


def cpu_step_memory(args, name) -> int:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)  # read by glibc when the child starts
    try:
        child = context.Process(target=cpu_step_memory_child, args=(args, name, queue))
        child.start()
        extra = queue.get()
        child.join()
    finally:
        del os.environ["MALLOC_MMAP_THRESHOLD_"]
    return extra


def generate_step(model, prompt, new_tokens):
    model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,  # a random model may emit EOS; both must produce the same count
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
    )


def cpu_time_by_kind(step) -> dict:
    """Seconds of one call of `step` per kind of op (OP_KINDS, "other", "total"), from torch.profiler's self CPU
    times: each op's own time, without the ops it calls."""
    with profile() as prof:
        step()
    seconds = dict.fromkeys([*OP_KINDS, "other"], 0.0)
    for event in prof.key_averages():
        kind = next((kind for kind, prefixes in OP_KINDS.items() if event.key.startswith(prefixes)), "other")
        seconds[kind] += event.self_cpu_time_total / 1e6
    seconds["total"] = sum(seconds.values())
    return seconds


def round_ratio(numerator: list, denominator: list) -> float:
    """Median over rounds of the per-round ratio: robust to load that changes between rounds, which a ratio of
    the two medians is not."""
    return statistics.median(n / d for n, d in zip(numerator, denominator))


def fmt_bytes(n) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MiB"


def main(argv=None):
    args = parse_args(argv)
    device = default_device() if args.device == "auto" else torch.device(args.device)
    dtype = DTYPES[args.dtype]
    torch.manual_seed(args.seed)
    disable_speed_ops(args.without)
    config = build_config(args)

    ours = build_model("ours", config, device, dtype)
    llama = build_model("llama", config, device, dtype, state_dict=ours.state_dict())
    models = {"ours": ours, "llama": llama}
    tokens = args.batch_size * args.block_size
    step_flops = flops_per_token(config, args.block_size, ours.num_parameters()) * tokens
    # On CPU the peak is measured in the timing rounds below, unless given
    interleaved_peak = device.type == "cpu" and not args.peak_tflops
    matmul_dtype = torch.bfloat16 if args.bf16_autocast else dtype
    peak = None if interleaved_peak else device_peak_flops(device, matmul_dtype, args.peak_tflops)

    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device_name}; torch {torch.__version__}; dtype {args.dtype}"
          f"{', bf16 autocast' if args.bf16_autocast else ''}")
    print(
        f"model: {config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab {config.vocab_size}, "
        f"{ours.num_parameters():,} parameters; step {args.batch_size} x {args.block_size} tokens"
        f"{' with gradient checkpointing' if args.gradient_checkpointing else ''}; "
        f"llama attention: {llama.config._attn_implementation}; "
        f"ours: use_speed_ops={config.use_speed_ops}{', without ' + ' '.join(args.without) if args.without else ''}"
    )

    rows = {name: {} for name in models}
    breakdown = {}
    if "train" not in args.skip:
        input_ids = torch.randint(0, config.vocab_size, (args.batch_size, args.block_size), device=device)
        steps = {}
        for name, model in models.items():
            prepare_for_training(model, args)
            optimizer = make_optimizer(model)
            steps[name] = lambda model=model, optimizer=optimizer: train_step(model, optimizer, input_ids,
                                                                              args.bf16_autocast)
            if args.compile and device.type == "cuda":
                compiled = torch.compile(model)
                steps[f"{name}+compile"] = lambda c=compiled, o=optimizer: train_step(c, o, input_ids,
                                                                                      args.bf16_autocast)
                rows[f"{name}+compile"] = {}
        if args.compile and device.type != "cuda":
            print("--compile skipped: inductor's CPU compile takes minutes and is not what this benchmark is for")
        if interleaved_peak:
            steps["matmul"], matmul_flops = matmul_probe(dtype=matmul_dtype)
            own = model_matmuls(config, tokens, matmul_dtype)
            steps.update({f"matmuls:{name}": run for name, (run, _, _) in own.items()})
        times = time_interleaved(steps, device, args.warmup, args.repeats)
        matmul_times = times.pop("matmul", None)
        if matmul_times:
            peak = matmul_flops / min(matmul_times)
            # the step's matmuls alone, each kind at its best: FLOPs over seconds, weighted as often as a step runs them
            own_seconds = sum(min(times.pop(f"matmuls:{name}")) * count for name, (_, _, count) in own.items())
            own_peak = sum(flops * count for _, flops, count in own.values()) / own_seconds
        for name, step_times in times.items():
            seconds = statistics.median(step_times)
            rows[name]["step_times"] = step_times
            rows[name]["step_s"] = seconds
            rows[name]["tokens_per_s"] = tokens / seconds
            if peak:  # measured peak: best against best (see the module docstring); a named one: the median step
                rows[name]["mfu"] = step_flops / (min(step_times) if matmul_times else seconds) / peak
            if matmul_times:
                rows[name]["mfu_own"] = step_flops / min(step_times) / own_peak
        if device.type == "cpu":
            breakdown = {name: cpu_time_by_kind(steps[name]) for name in models}
    print(f"peak for MFU: {'unknown' if peak is None else f'{peak / 1e12:.3f} TFLOP/s'}"
          f"{' (best 2048^2 matmul of the timing rounds, against the best steps)' if interleaved_peak and peak else ''}")
    if interleaved_peak and "train" not in args.skip:
        print(f"the step's own matmul shapes alone: {own_peak / 1e12:.3f} TFLOP/s ({own_peak / peak:.0%} of that "
              "peak); 'MFU own' is MFU against it: how close the step runs to its matmuls' limit")

    if "memory" not in args.skip:
        for name, model in models.items():
            if device.type == "cuda":
                prepare_for_training(model, args)
                optimizer = make_optimizer(model)
                input_ids = torch.randint(0, config.vocab_size, (args.batch_size, args.block_size), device=device)
                rows[name]["memory"] = cuda_step_memory(model, optimizer, input_ids, args.bf16_autocast)
            else:
                rows[name]["memory"] = cpu_step_memory(args, name)

    if "generate" not in args.skip:
        prompt = torch.randint(0, config.vocab_size, (1, args.prompt_tokens), device=device)
        for model in models.values():
            model.eval()
        with torch.no_grad():
            steps = {name: lambda m=model: generate_step(m, prompt, args.new_tokens) for name, model in models.items()}
            for name, times in time_interleaved(steps, device, 1, args.repeats).items():
                rows[name]["gen_times"] = times
                rows[name]["gen_tokens_per_s"] = args.new_tokens / statistics.median(times)

    print()
    print(f"{'model':<16}{'step ms':>10}{'tokens/s':>12}{'MFU':>8}{'MFU own':>9}{'step extra mem':>18}"
          f"{'gen tokens/s':>15}")
    for name, row in rows.items():
        step = f"{row['step_s'] * 1e3:,.0f}" if "step_s" in row else "-"
        tps = f"{row['tokens_per_s']:,.0f}" if "tokens_per_s" in row else "-"
        mfu, mfu_own = (f"{row[key]:.1%}" if row.get(key) is not None else "-" for key in ("mfu", "mfu_own"))
        gen = f"{row['gen_tokens_per_s']:,.1f}" if "gen_tokens_per_s" in row else "-"
        print(f"{name:<16}{step:>10}{tps:>12}{mfu:>8}{mfu_own:>9}{fmt_bytes(row.get('memory')):>18}{gen:>15}")

    if breakdown:
        print()
        print("one profiled step, seconds of CPU time per kind of op:")
        print(f"{'model':<16}" + "".join(f"{kind:>11}" for kind in breakdown["ours"]))
        for name, seconds in breakdown.items():
            print(f"{name:<16}" + "".join(f"{value:>11.3f}" for value in seconds.values()))
        total, other = breakdown["llama"]["total"], breakdown["llama"]["other"]
        # ours runs the same matmuls, attention and optimizer: at best it drops all of Llama's "other" time
        print(f"speed bound, llama total / llama without 'other': {total / (total - other):.2f}x")
        if matmul_times:
            # The best MFU that any rewrite of ours' elementwise work could reach on this machine: its matmuls at
            # their own best rate, attention and AdamW as profiled, and no other work (norms, activations, softmax).
            floor_s = own_seconds + breakdown["ours"]["attention"] + breakdown["ours"]["optimizer"]
            print(f"MFU ceiling, ours' matmuls at their own rate + attention + AdamW, nothing else: "
                  f"{step_flops / floor_s / peak:.1%} ({floor_s:.2f} s a step)")

    ours_row, llama_row = rows["ours"], rows["llama"]
    print()
    if "step_s" in ours_row:
        speed = round_ratio(llama_row['step_times'], ours_row['step_times'])
        print(f"training step speed, ours / llama: {speed:.2f}x")
        if args.results:
            append_jsonl(args.results, {"stage": "ours against LlamaForCausalLM", "speed_ratio": speed, **{
                name: {"step_time": row["step_s"], "tokens_per_second": row["tokens_per_s"], "mfu": row.get("mfu"),
                       "model_tflops": step_flops / row["step_s"] / 1e12} for name, row in rows.items()}})
    if "gen_tokens_per_s" in ours_row:
        print(f"generation speed, ours / llama:    {round_ratio(llama_row['gen_times'], ours_row['gen_times']):.2f}x")
    if "memory" in ours_row:
        print(f"step extra memory, ours / llama:   {ours_row['memory'] / llama_row['memory']:.2f}")


if __name__ == "__main__":
    main()
