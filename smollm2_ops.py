"""Speed ops of SmolLM2: hand-written backward passes and a chunked linear cross-entropy.

`modeling_smollm2.py` is plain PyTorch, line for line transformers' Llama. With `config.use_speed_ops=True` its
modules call these ops instead, where `speed_ops_apply` allows: on CPU (the only device they were measured on),
not under torch.compile (inductor fuses the plain ops itself, and an autograd.Function is a graph break), and,
for the backward-pass ops, only when grad is enabled (decoding has nothing to save and only pays per-call overhead).
With `config.chunked_loss=True` the loss is chunked on every device and under torch.compile too, in plain ops
(`chunked_linear_cross_entropy`). Each op computes exactly the plain path's values and gradients
(tests/unit/test_modeling.py checks both).

    python benchmarks/bench_model.py   # why each op is here: step time and memory against LlamaForCausalLM

On CPU a fresh (tokens, width) tensor costs more in page faults than the arithmetic on it (about 10x an in-place
pass), so the ops are written around few fresh buffers reused in place.

This file travels to the Hub next to `modeling_smollm2.py` and imports only torch.
"""

import torch
import torch.nn.functional as F
from torch import nn


IGNORE_INDEX = -100  # label value that takes no part in the loss (PyTorch's and transformers' convention)


def speed_ops_apply(config, tensor: torch.Tensor, needs_grad: bool = True) -> bool:
    """Whether a module with this config (None: a module built without one) runs its speed op on `tensor`, or the
    plain path."""
    return (
        # first: the cheapest test, and False in every decoding step. The config's attribute reads go through
        # PretrainedConfig.__getattribute__ (Python), so they come after it: 121 calls per decoded token.
        (torch.is_grad_enabled() or not needs_grad)
        and config is not None
        and config.use_speed_ops
        and tensor.device.type == "cpu"  # measured on CPU only; elsewhere the plain path is the known quantity
        and not torch.compiler.is_compiling()  # the plain path is what compiles (and fuses) best
    )


# ------------------------------------------------------------------------------------------------------- RMSNorm


def _rms_norm_forward(hidden_states: torch.Tensor, weight: torch.Tensor, eps: float):
    """`weight * hidden_states / rms(hidden_states)`, and the per-token 1 / rms, shape (..., 1)."""
    # fp32 at least for the mean square, as Llama; fp64 stays fp64 (gradcheck)
    upcast = hidden_states.to(torch.promote_types(hidden_states.dtype, torch.float32))
    normed = torch.empty_like(upcast)  # one fresh buffer: the squares, then the normalised states, then the output
    rstd = torch.rsqrt(torch.pow(upcast, 2, out=normed).mean(-1, keepdim=True) + eps)
    normed = torch.mul(upcast, rstd, out=normed).to(hidden_states.dtype)
    # in place unless the weight promotes it (fp32 weight, bf16 states: the output is fp32, as in Llama)
    return normed.mul_(weight) if torch.result_type(weight, normed) == normed.dtype else weight * normed, rstd


class SmolLM2RMSNormFunction(torch.autograd.Function):
    """RMSNorm keeping the input and one scale per token for backward.

    Autograd would also keep the normalised (tokens, hidden) copy, two norms per layer; backward recomputes it
    (one multiply) instead.
    """

    @staticmethod
    def forward(ctx, hidden_states, weight, eps):
        output, rstd = _rms_norm_forward(hidden_states, weight, eps)
        ctx.save_for_backward(hidden_states, weight, rstd)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        hidden_states, weight, rstd = ctx.saved_tensors
        dtype = rstd.dtype
        normed = hidden_states * rstd
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_normed = torch.mul(grad_output, normed)  # first grad_weight's per-token terms, then reused
            grad_weight = grad_normed.reshape(-1, weight.shape[0]).sum(0).to(weight.dtype)
            grad_normed = torch.mul(grad_output, weight, out=grad_normed)
        else:
            grad_normed = (grad_output * weight).to(dtype)
        # d/dx of x * rsqrt(mean(x^2)) is rstd times the part of grad_normed orthogonal to normed:
        # rstd * (grad_normed - normed * projection) = rstd * grad_normed - x * (rstd^2 * projection)
        projection = normed.mul_(grad_normed).mean(-1, keepdim=True)
        grad_input = grad_normed.mul_(rstd).addcmul_(hidden_states, rstd.square().mul_(projection), value=-1)
        return grad_input.to(hidden_states.dtype), grad_weight, None


def rms_norm(hidden_states: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return SmolLM2RMSNormFunction.apply(hidden_states, weight, eps)


# ---------------------------------------------------------------------------------------------------------- RoPE


def _rotate(states: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, value: float = 1.0) -> torch.Tensor:
    """Llama's `states * cos + rotate_half(states) * sin` in one fresh tensor: rotate_half's sign moves into the
    (per-position, not per-head) `signed_sin` = sin with its first half negated, and its two slices are read in
    place by one multiply-add per half. `value=-1` turns by the opposite angle (the transpose, for backward)."""
    half = states.shape[-1] // 2
    rotated = states * cos
    rotated[..., :half].addcmul_(states[..., half:], signed_sin[..., :half], value=value)
    rotated[..., half:].addcmul_(states[..., :half], signed_sin[..., half:], value=value)
    return rotated


class SmolLM2RotaryFunction(torch.autograd.Function):
    """`_rotate` with its transpose as backward. Autograd's backward of the plain ops builds a zero-filled gradient
    per slice and sums the paths: more kernels and fresh tensors per query and key."""

    @staticmethod
    def forward(ctx, states, cos, signed_sin):
        ctx.save_for_backward(cos, signed_sin)
        return _rotate(states, cos, signed_sin)

    @staticmethod
    def backward(ctx, grad_output):
        cos, signed_sin = ctx.saved_tensors
        # x -> x * cos + roll(x) * signed_sin has the transpose g -> g * cos + roll(g * signed_sin), and
        # roll(signed_sin) = -signed_sin because both halves of sin are the same angles.
        return _rotate(grad_output, cos, signed_sin, value=-1), None, None


def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    """Same contract as the model's `apply_rotary_pos_emb`."""
    half = sin.shape[-1] // 2
    signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1).unsqueeze(unsqueeze_dim)
    cos = cos.unsqueeze(unsqueeze_dim)
    return SmolLM2RotaryFunction.apply(q, cos, signed_sin), SmolLM2RotaryFunction.apply(k, cos, signed_sin)


# -------------------------------------------------------------------------------------------------------- SwiGLU


class SmolLM2SwiGLUFunction(torch.autograd.Function):
    """`down_proj(silu(gate_proj(x)) * up_proj(x))` from the three weights, keeping x, gate and up for backward.

    Autograd would also keep silu(gate) and the product: two more (tokens, intermediate) tensors per layer, the
    largest activations of the model. Backward recomputes both (elementwise, cheap); no matmul is repeated.
    """

    @staticmethod
    def forward(ctx, hidden_states, gate_weight, up_weight, down_weight):
        gate = F.linear(hidden_states, gate_weight)  # (..., intermediate)
        up = F.linear(hidden_states, up_weight)
        output = F.linear(F.silu(gate).mul_(up), down_weight)
        # gate.dtype is the compute dtype (autocast's, if on). Backward runs outside autocast, so it casts itself,
        # and x is kept in that dtype, as autocast's linears do.
        ctx.input_dtype = hidden_states.dtype
        ctx.save_for_backward(hidden_states.to(gate.dtype), gate, up, gate_weight, up_weight, down_weight)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        hidden_states, gate, up, gate_weight, up_weight, down_weight = ctx.saved_tensors
        dtype = gate.dtype
        hidden_states = hidden_states.reshape(-1, hidden_states.shape[-1])  # (tokens, hidden)
        gate, up = gate.reshape(-1, gate.shape[-1]), up.reshape(-1, up.shape[-1])  # (tokens, intermediate)
        grad_output_2d = grad_output.to(dtype).reshape(-1, grad_output.shape[-1])
        grad_intermediate = grad_output_2d @ down_weight.to(dtype)  # d(loss)/d(silu(gate) * up)
        # silu's backward is linear in its incoming gradient: silu_backward(g * up) = silu_backward(g) * up
        activation = F.silu(gate)
        grad_gate = torch.ops.aten.silu_backward(grad_intermediate, gate).mul_(up)
        grad_up = grad_intermediate.mul_(activation)
        intermediate = activation.mul_(up)  # silu(gate) * up, the down projection's input
        grad_hidden = grad_gate_weight = grad_up_weight = grad_down_weight = None
        if ctx.needs_input_grad[0]:
            grad_hidden = torch.addmm(grad_gate @ gate_weight.to(dtype), grad_up, up_weight.to(dtype))
            grad_hidden = grad_hidden.reshape(grad_output.shape[:-1] + (-1,)).to(ctx.input_dtype)
        if ctx.needs_input_grad[1]:
            grad_gate_weight = (grad_gate.t() @ hidden_states).to(gate_weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_up_weight = (grad_up.t() @ hidden_states).to(up_weight.dtype)
        if ctx.needs_input_grad[3]:
            grad_down_weight = (grad_output_2d.t() @ intermediate).to(down_weight.dtype)
        return grad_hidden, grad_gate_weight, grad_up_weight, grad_down_weight


def swiglu_applies(mlp: nn.Module) -> bool:
    """SiLU, and three nn.Linear without bias or hooks (LoRA adapters, quantised or hooked linears run as modules)."""
    projections = (mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    return mlp.config.hidden_act == "silu" and all(
        type(module) is nn.Linear
        and module.bias is None
        and not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)
        for module in projections
    )


def swiglu_mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return SmolLM2SwiGLUFunction.apply(x, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)


# ------------------------------------------------------------------------------------------- chunked cross-entropy


def _linear_cross_entropy_and_gradients(hidden_states, weight, labels, chunk_size, needs_hidden_grad,
                                        needs_weight_grad):
    """Summed cross-entropy of `hidden_states @ weight.T` against labels, `chunk_size` tokens at a time, and its
    gradients with respect to `hidden_states` and `weight` (None where not needed), taken chunk by chunk.

    hidden_states: (tokens, hidden), weight: (vocab, hidden), labels: (tokens,). Each chunk's logits live only while
    that chunk is processed, in one (chunk, vocab) buffer that serves every chunk, overwritten in place: logits,
    log-probabilities, d(loss)/d(logits). The (tokens, vocab) logits never exist at once.
    """
    # Matmuls in autocast's dtype when it is on, as F.linear's would; the softmax in fp32 at least, as
    # transformers' causal-LM loss upcasts. fp64 stays fp64 (gradcheck).
    device_type = hidden_states.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = torch.promote_types(hidden_states.dtype, weight.dtype)
    score_dtype = torch.promote_types(dtype, torch.float32)
    hidden, weight_in_dtype = hidden_states.to(dtype), weight.to(dtype)
    tokens, vocab_size = hidden.shape[0], weight.shape[0]
    logits_buffer = hidden.new_empty(min(chunk_size, tokens), vocab_size)
    scores_buffer = logits_buffer if dtype == score_dtype else torch.empty_like(logits_buffer, dtype=score_dtype)
    loss = torch.zeros((), dtype=score_dtype, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if needs_hidden_grad else None
    grad_weight = None
    for start in range(0, tokens, chunk_size):
        chunk = slice(start, start + chunk_size)
        hidden_chunk, label_chunk = hidden[chunk], labels[chunk]
        rows = hidden_chunk.shape[0]
        keep = (label_chunk != IGNORE_INDEX).unsqueeze(1)  # (rows, 1)
        target = label_chunk.clamp(min=0).unsqueeze(1)  # any valid index on ignored rows; they are masked out
        logits = torch.mm(hidden_chunk, weight_in_dtype.t(), out=logits_buffer[:rows])  # (rows, vocab)
        scores = logits if dtype == score_dtype else scores_buffer[:rows].copy_(logits)
        log_probs = torch.log_softmax(scores, dim=-1, out=scores)  # in place: each row is read before written
        loss -= log_probs.gather(1, target).masked_fill_(~keep, 0.0).sum()
        if not (needs_hidden_grad or needs_weight_grad):
            continue
        # d(loss)/d(logits) = softmax - one_hot(label); ignored rows are zeroed in the (rows, hidden) factors
        grad_logits = log_probs.exp_().scatter_add_(1, target, torch.full_like(target, -1, dtype=score_dtype))
        if grad_logits is not logits:
            grad_logits = logits.copy_(grad_logits)  # back to the matmul dtype
        if needs_hidden_grad:
            torch.mm(grad_logits, weight_in_dtype, out=grad_hidden[chunk]).masked_fill_(~keep, 0.0)
        if needs_weight_grad:
            hidden_kept = hidden_chunk.masked_fill(~keep, 0.0)
            if grad_weight is None:
                grad_weight = (grad_logits.t() @ hidden_kept).to(score_dtype)
            elif grad_weight.dtype == dtype:
                grad_weight.addmm_(grad_logits.t(), hidden_kept)  # summed inside the GEMM: no (vocab, hidden) copy
            else:
                grad_weight.add_(grad_logits.t() @ hidden_kept)  # summed in fp32: bf16 sums round small chunks away
    if grad_hidden is not None:
        grad_hidden = grad_hidden.to(hidden_states.dtype)
    if grad_weight is not None:
        grad_weight = grad_weight.to(weight.dtype)
    return loss, grad_hidden, grad_weight


class SmolLM2LinearCrossEntropy(torch.autograd.Function):
    """`_linear_cross_entropy_and_gradients` as an autograd op, the CPU speed op: backward only scales the gradients
    taken in forward, so nothing is recomputed."""

    @staticmethod
    def forward(ctx, hidden_states, weight, labels, chunk_size, grad_enabled):
        # needs_input_grad stays True under torch.no_grad(), so the caller says whether a backward can follow
        # (evaluation skips the gradients).
        loss, grad_hidden, grad_weight = _linear_cross_entropy_and_gradients(
            hidden_states, weight, labels, chunk_size, grad_enabled and ctx.needs_input_grad[0],
            grad_enabled and ctx.needs_input_grad[1])
        ctx.save_for_backward(grad_hidden, grad_weight)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        # Scaled in place: a (vocab, hidden) copy per step saved. A second backward through this graph
        # (retain_graph=True) then fails loudly on the saved tensors' version check instead of reusing them.
        if grad_hidden is not None:
            grad_hidden.mul_(grad_loss)
        if grad_weight is not None:
            grad_weight.mul_(grad_loss)
        return grad_hidden, grad_weight, None, None, None


def chunked_linear_cross_entropy(hidden_states, weight, labels, chunk_size):
    """The same summed loss and gradients in plain PyTorch ops, for every device and for torch.compile (an
    autograd.Function would be a graph break, or an opaque node the compiler cannot fuse into).

    The gradients are taken in forward without building a graph, then attached to the result through
    `surrogate - surrogate.detach()`: zero in value, with exactly those gradients (the surrogate is linear in
    `hidden_states` and `weight`), so autograd keeps two (tokens, hidden) and (vocab, hidden) tensors for backward
    instead of the logits and their softmax, and recomputes nothing.
    """
    needs_hidden_grad = torch.is_grad_enabled() and hidden_states.requires_grad
    needs_weight_grad = torch.is_grad_enabled() and weight.requires_grad
    with torch.no_grad():
        loss, grad_hidden, grad_weight = _linear_cross_entropy_and_gradients(
            hidden_states, weight, labels, chunk_size, needs_hidden_grad, needs_weight_grad)
    surrogate = loss.new_zeros(())
    if grad_hidden is not None:
        surrogate = surrogate + (hidden_states * grad_hidden).sum()
    if grad_weight is not None:
        surrogate = surrogate + (weight * grad_weight).sum()
    return loss + (surrogate - surrogate.detach())


def causal_lm_loss(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.LongTensor | None,
    chunk_size: int,
    num_items_in_batch: torch.Tensor | int | None = None,
    shift_labels: torch.LongTensor | None = None,
    speed_op: bool = False,
    **kwargs,
) -> torch.Tensor:
    """transformers' causal-LM loss (`ForCausalLMLoss`) of `hidden_states @ weight.T`, without the logits.

    labels (batch, seq) are shifted here (position t predicts t + 1), unless `shift_labels` gives them shifted
    already; the token sum is divided by `num_items_in_batch` when given (gradient accumulation), else by the
    number of kept tokens. `speed_op`: the hand-written autograd op (CPU training), else the plain ops of
    `chunked_linear_cross_entropy`. Other keyword arguments (the model's forward kwargs) are ignored, as the stock
    loss does.
    """
    if shift_labels is None:
        # padding the labels rather than slicing the hidden states: no copy of the activations
        shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]
    shift_labels = shift_labels.reshape(-1).to(hidden_states.device)  # (batch * seq,)
    hidden_states = hidden_states.reshape(-1, hidden_states.shape[-1])  # (batch * seq, hidden)
    if speed_op:
        loss_sum = SmolLM2LinearCrossEntropy.apply(
            hidden_states, weight, shift_labels, chunk_size, torch.is_grad_enabled()
        )
    else:
        loss_sum = chunked_linear_cross_entropy(hidden_states, weight, shift_labels, chunk_size)
    if num_items_in_batch is None:
        num_items_in_batch = (shift_labels != IGNORE_INDEX).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss_sum.device)
    return loss_sum / num_items_in_batch
