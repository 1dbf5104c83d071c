"""SmolLM2, a Llama-architecture decoder, written out in one file.

Parameter names are LlamaForCausalLM's, so official checkpoints load with no key map and any Llama state dict copies
in strictly. Differences from transformers' Llama are about cost, not maths: with `labels` the loss is computed in
chunks and never materialises the `(batch, seq, vocab)` logits (`logits` is then `None`); RMSNorm, RoPE and the
SwiGLU MLP have hand-written backward passes, used when grad is enabled, that keep fewer activations (recomputing the
cheap elementwise ones) in fewer kernels; and an explicit attention mask is only built when there is padding or a
cache offset, so SDPA keeps its `is_causal` kernels otherwise.

Loading (official SmolLM2 checkpoints are Llama-format: config.json with model_type "llama"):
    SmolLM2ForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M")           # Llama-format folder or Hub id
    SmolLM2ForCausalLM.from_pretrained(folder, gguf_file="x.gguf")            # GGUF, dequantised by transformers
    AutoModelForCausalLM.from_pretrained(saved_folder, trust_remote_code=True)  # a folder saved from this class

GGUF works because transformers reads the file into a Llama config dict whose model_type "llama" stays on the
config instance (the class's "smollm2" is what gets saved), and its GGUF reader maps tensor names by that
model_type; it dequantises the blocks and un-permutes q/k by the file's own architecture.

This file travels to the Hub as remote code next to `configuration_smollm2.py`; it imports only torch and
transformers.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast


try:
    from .configuration_smollm2 import SmolLM2Config
except ImportError:  # imported as a top-level module rather than from a Hub package
    from configuration_smollm2 import SmolLM2Config


IGNORE_INDEX = -100  # label value that takes no part in the loss (PyTorch's and transformers' convention)


def rms_norm(hidden_states: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`weight * hidden_states / rms(hidden_states)`, and the per-token 1 / rms, shape (..., 1)."""
    # The mean square in bf16 loses the small components; fp32 (at least) is what the checkpoints were trained
    # with. fp64 stays fp64, for gradcheck.
    upcast = hidden_states.to(torch.promote_types(hidden_states.dtype, torch.float32))
    # Llama's ops, in one fresh buffer: the squares, then the normalised states, then the output. On CPU a fresh
    # (tokens, hidden) tensor costs more in page faults than the arithmetic (about 10x an in-place pass).
    normed = torch.empty_like(upcast)
    rstd = torch.rsqrt(torch.pow(upcast, 2, out=normed).mean(-1, keepdim=True) + eps)
    normed = torch.mul(upcast, rstd, out=normed).to(hidden_states.dtype)
    # in place unless the weight promotes it (fp32 weight, bf16 states: the output is fp32, as in Llama)
    return normed.mul_(weight) if torch.result_type(weight, normed) == normed.dtype else weight * normed, rstd


class SmolLM2RMSNormFunction(torch.autograd.Function):
    """`rms_norm` with a hand-written backward that keeps the input and one scale per token.

    Autograd would also keep the normalised (tokens, hidden) copy, one per norm and two norms per layer; the
    backward recomputes it from the input instead (one multiply), and runs in fewer kernels.
    """

    @staticmethod
    def forward(ctx, hidden_states, weight, eps):
        output, rstd = rms_norm(hidden_states, weight, eps)
        ctx.save_for_backward(hidden_states, weight, rstd)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        hidden_states, weight, rstd = ctx.saved_tensors
        dtype = rstd.dtype  # rms_norm's compute dtype
        # Two fresh (tokens, hidden) buffers, reused in place as in rms_norm: normed, and grad_normed, which first
        # holds grad_weight's per-token terms.
        normed = hidden_states * rstd
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_normed = torch.mul(grad_output, normed)
            grad_weight = grad_normed.reshape(-1, weight.shape[0]).sum(0).to(weight.dtype)
            grad_normed = torch.mul(grad_output, weight, out=grad_normed)
        else:
            grad_normed = (grad_output * weight).to(dtype)
        # d/dx of x * rsqrt(mean(x^2)) is rstd times the part of grad_normed orthogonal to normed:
        # rstd * (grad_normed - normed * projection) = rstd * grad_normed - x * (rstd^2 * projection)
        projection = normed.mul_(grad_normed).mean(-1, keepdim=True)
        grad_input = grad_normed.mul_(rstd).addcmul_(hidden_states, rstd.square().mul_(projection), value=-1)
        return grad_input.to(hidden_states.dtype), grad_weight, None


class SmolLM2RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # The hand-written backward only pays off when there is a backward; decoding is bound by per-call overhead.
        if torch.is_grad_enabled():
            return SmolLM2RMSNormFunction.apply(hidden_states, self.weight, self.variance_epsilon)
        return rms_norm(hidden_states, self.weight, self.variance_epsilon)[0]


class SmolLM2RotaryEmbedding(nn.Module):
    """cos and `sign_sin(sin)` of the default RoPE, computed once per forward and shared by every layer."""

    def __init__(self, config: SmolLM2Config):
        super().__init__()
        self.head_dim = config.head_dim
        self.rope_theta = config.rope_theta

    def forward(self, x: torch.Tensor, position_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Recomputed rather than kept in a buffer: head_dim / 2 values cost nothing, and a buffer would be cast to
        # bf16 by `model.to(dtype)` and left uninitialised by transformers' meta-device loading.
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float, device=x.device) / self.head_dim
        inv_freq = 1.0 / (self.rope_theta**exponents)
        freqs = position_ids[..., None].float() * inv_freq  # (batch, seq, head_dim / 2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (batch, seq, head_dim)
        return emb.cos().to(x.dtype), sign_sin(emb.sin()).to(x.dtype)


def sign_sin(sin: torch.Tensor) -> torch.Tensor:
    """sin with its first half negated: Llama's `rotate_half(x) * sin` is then `x.roll(half) * sign_sin(sin)`."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def rotate(states: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, value: float = 1.0) -> torch.Tensor:
    """RoPE: each pair (i, i + head_dim / 2) of `states` turned by its position's angle; `signed_sin` is
    `sign_sin(sin)`. `value=-1` turns by the opposite angle (the rotation's transpose, for backward).

    Llama's `states * cos + rotate_half(states) * sin`, that is `states * cos + states.roll(half) * signed_sin`,
    in one fresh tensor and three kernels instead of five fresh tensors: rotate_half's sign moves into the
    (per-position, not per-head) sin, and its two slices are read in place by one multiply-add per half.
    """
    half = states.shape[-1] // 2
    rotated = states * cos
    rotated[..., :half].addcmul_(states[..., half:], signed_sin[..., :half], value=value)
    rotated[..., half:].addcmul_(states[..., :half], signed_sin[..., half:], value=value)
    return rotated


class SmolLM2RotaryFunction(torch.autograd.Function):
    """`rotate` with a hand-written backward: the rotation's transpose, in three kernels.

    Autograd's backward of the same ops would build a zero-filled full-size gradient for each half's slice and
    then sum the paths: more kernels and fresh tensors per query and key.
    """

    @staticmethod
    def forward(ctx, states, cos, signed_sin):
        ctx.save_for_backward(cos, signed_sin)
        return rotate(states, cos, signed_sin)

    @staticmethod
    def backward(ctx, grad_output):
        cos, signed_sin = ctx.saved_tensors
        # The rotation is x -> x * cos + roll(x) * signed_sin; its transpose is g -> g * cos + roll(g * signed_sin),
        # and roll(signed_sin) = -signed_sin because both halves of sin are the same angles.
        return rotate(grad_output, cos, signed_sin, value=-1), None, None


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotates q and k, both (batch, heads, seq, head_dim), by cos and `sign_sin(sin)` of shape
    (batch, seq, head_dim)."""
    cos = cos.unsqueeze(1)  # broadcast over heads
    signed_sin = signed_sin.unsqueeze(1)
    rotation = SmolLM2RotaryFunction.apply if torch.is_grad_enabled() else rotate  # see SmolLM2RMSNorm.forward
    return rotation(q, cos, signed_sin), rotation(k, cos, signed_sin)


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(batch, kv_heads, seq, head_dim) -> (batch, kv_heads * n_rep, seq, head_dim), each kv head n_rep times."""
    batch, num_key_value_heads, slen, head_dim = hidden_states.shape
    if n_rep == 1:
        return hidden_states
    hidden_states = hidden_states[:, :, None, :, :].expand(batch, num_key_value_heads, n_rep, slen, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, slen, head_dim)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
) -> torch.Tensor:
    """Attention written out, the reference the SDPA path is tested against.

    query is (batch, heads, q_len, head_dim), key/value (batch, kv_heads, kv_len, head_dim). attention_mask is a
    boolean (batch, 1, q_len, kv_len) mask, True where a query may attend, or None for plain causal attention whose
    queries are the last q_len positions. Returns (batch, heads, q_len, head_dim).
    """
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling  # (batch, heads, q_len, kv_len)
    if attention_mask is None:
        q_len, kv_len = query.shape[2], key.shape[2]
        attention_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
    attn_weights = attn_weights.masked_fill(~attention_mask, torch.finfo(attn_weights.dtype).min)
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(attn_weights, value_states)


def sdpa_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
) -> torch.Tensor:
    """Same contract as `eager_attention_forward`, through torch's fused scaled_dot_product_attention."""
    # Without a mask, is_causal lets SDPA pick its flash kernels. Its causal mask is aligned top-left, which is only
    # right without a cache offset: the model passes an explicit mask whenever q_len > 1 follows cached tokens.
    # A single query (decoding) attends to every cached key, which is no mask at all.
    return F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        is_causal=attention_mask is None and query.shape[2] > 1,
        scale=scaling,
        enable_gqa=module.num_key_value_groups > 1,  # reads the shared kv heads in place instead of repeat_kv copies
    )


def causal_attention_mask(
    attention_mask: torch.Tensor | None, query_length: int, past_length: int, device: torch.device
) -> torch.Tensor | None:
    """Boolean mask broadcastable to (batch, 1, query_length, past_length + query_length), True where a query may
    attend; None when plain causal attention over the last query_length positions is exact (no padding, and no
    cached tokens before a multi-token query), which lets SDPA use is_causal.

    attention_mask is the 2D (batch, past_length + query_length) padding mask, 1 for real tokens.
    """
    # A CPU-GPU sync point, paid once per forward: an all-ones mask (packed training batches) would otherwise
    # force the masked, slower SDPA kernels.
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None
    if attention_mask is None and (past_length == 0 or query_length == 1):
        return None
    key_length = past_length + query_length
    query_positions = torch.arange(past_length, key_length, device=device)[:, None]
    key_positions = torch.arange(key_length, device=device)[None, :]
    mask = key_positions <= query_positions  # (query_length, key_length)
    if attention_mask is not None:
        # A left-padded query would see only padding, an all-False row that makes softmax NaN and spreads through
        # the values of later layers. Letting every query see itself keeps those rows finite; their outputs are
        # never read.
        mask = mask & (attention_mask[:, None, None, :].bool() | (key_positions == query_positions))
    return mask


class SmolLM2LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden_states @ weight.T` against labels, `chunk_size` tokens at a time.

    Each chunk's logits live only while that chunk is processed, and their gradient is taken right there and
    multiplied into the hidden-state and weight gradients. Backward only scales the stored gradients: nothing is
    recomputed, and the (tokens, vocab) logits never exist at once.
    """

    @staticmethod
    def forward(ctx, hidden_states, weight, labels, chunk_size, grad_enabled):
        # hidden_states: (tokens, hidden), weight: (vocab, hidden), labels: (tokens,). needs_input_grad stays True
        # under torch.no_grad(), so the caller says whether a backward can follow (evaluation skips the gradients).
        needs_hidden_grad = grad_enabled and ctx.needs_input_grad[0]
        needs_weight_grad = grad_enabled and ctx.needs_input_grad[1]
        # The matmuls run in autocast's dtype when it is on, as F.linear's would. The softmax runs in fp32 at least,
        # as transformers' causal-LM loss upcasts: bf16 log-probabilities are too coarse. fp64 stays fp64 (gradcheck).
        device_type = hidden_states.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
        else:
            dtype = torch.promote_types(hidden_states.dtype, weight.dtype)
        score_dtype = torch.promote_types(dtype, torch.float32)
        hidden, weight_in_dtype = hidden_states.to(dtype), weight.to(dtype)
        tokens, vocab_size = hidden.shape[0], weight.shape[0]
        # One (chunk, vocab) buffer serves every chunk, overwritten in place: logits, log-probabilities,
        # d(loss)/d(logits). A fresh tensor for each is a fresh mapping of up to hundreds of MB on CPU, whose page
        # faults cost more than the softmax itself, and a separate pass to add each chunk's weight gradient.
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
            # in place (out= its own input): each row is read in full before it is written
            log_probs = torch.log_softmax(scores, dim=-1, out=scores)
            loss -= log_probs.gather(1, target).masked_fill_(~keep, 0.0).sum()
            if not (needs_hidden_grad or needs_weight_grad):
                continue
            # d(loss)/d(logits) = softmax - one_hot(label). Ignored rows are zeroed through the (rows, hidden) factors
            # rather than in this (rows, vocab) tensor: same result, cheaper.
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
                    # summed in fp32: adding many chunks' bf16 products would round away the small ones
                    grad_weight.add_(grad_logits.t() @ hidden_kept)
        if grad_hidden is not None:
            grad_hidden = grad_hidden.to(hidden_states.dtype)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
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


class SmolLM2SwiGLUFunction(torch.autograd.Function):
    """`down_proj(silu(gate_proj(x)) * up_proj(x))` from the three weights, keeping x, gate and up for backward.

    Autograd would also keep silu(gate) and the product, two more (tokens, intermediate) tensors per layer: the
    largest activations of the model. Backward recomputes both (elementwise, cheap) instead; the matmuls are the
    same as autograd's, and none is repeated.
    """

    @staticmethod
    def forward(ctx, hidden_states, gate_weight, up_weight, down_weight):
        gate = F.linear(hidden_states, gate_weight)  # (..., intermediate)
        up = F.linear(hidden_states, up_weight)
        output = F.linear(F.silu(gate).mul_(up), down_weight)  # in place: one (tokens, intermediate) buffer fewer
        # gate.dtype is the compute dtype: autocast's when forward ran under it. Backward runs outside autocast,
        # so it casts to that dtype itself, and x is kept in it (half the bytes in bf16), as autocast's linears do.
        ctx.input_dtype = hidden_states.dtype
        ctx.save_for_backward(hidden_states.to(gate.dtype), gate, up, gate_weight, up_weight, down_weight)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        hidden_states, gate, up, gate_weight, up_weight, down_weight = ctx.saved_tensors
        dtype = gate.dtype
        # 2D views: (tokens, hidden) and (tokens, intermediate)
        hidden_states = hidden_states.reshape(-1, hidden_states.shape[-1])
        gate, up = gate.reshape(-1, gate.shape[-1]), up.reshape(-1, up.shape[-1])
        grad_output_2d = grad_output.to(dtype).reshape(-1, grad_output.shape[-1])
        grad_intermediate = grad_output_2d @ down_weight.to(dtype)  # d(loss)/d(silu(gate) * up)
        # Two fresh (tokens, intermediate) buffers, the rest in place at each buffer's last use: on CPU a fresh
        # buffer this size costs more in page faults than the arithmetic (about 10x an in-place pass). silu's
        # backward is linear in its incoming gradient, so silu_backward(g * up) = silu_backward(g) * up.
        activation = F.silu(gate)
        grad_gate = torch.ops.aten.silu_backward(grad_intermediate, gate).mul_(up)
        grad_up = grad_intermediate.mul_(activation)
        intermediate = activation.mul_(up)  # silu(gate) * up, the down projection's input
        grad_hidden = grad_gate_weight = grad_up_weight = grad_down_weight = None
        if ctx.needs_input_grad[0]:
            # addmm sums the two products in the GEMM: no separate pass to add them
            grad_hidden = torch.addmm(grad_gate @ gate_weight.to(dtype), grad_up, up_weight.to(dtype))
            grad_hidden = grad_hidden.reshape(grad_output.shape[:-1] + (-1,)).to(ctx.input_dtype)
        if ctx.needs_input_grad[1]:
            grad_gate_weight = (grad_gate.t() @ hidden_states).to(gate_weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_up_weight = (grad_up.t() @ hidden_states).to(up_weight.dtype)
        if ctx.needs_input_grad[3]:
            grad_down_weight = (grad_output_2d.t() @ intermediate).to(down_weight.dtype)
        return grad_hidden, grad_gate_weight, grad_up_weight, grad_down_weight


def is_plain_linear(module: nn.Module) -> bool:
    """True for an nn.Linear without bias or hooks, whose forward is `F.linear(x, module.weight)` and nothing else."""
    return (
        type(module) is nn.Linear
        and module.bias is None
        and not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)
    )


class SmolLM2MLP(nn.Module):
    def __init__(self, config: SmolLM2Config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]
        self.is_swiglu = config.hidden_act == "silu"  # SmolLM2SwiGLUFunction is written for SiLU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projections = (self.gate_proj, self.up_proj, self.down_proj)
        if torch.is_grad_enabled() and self.is_swiglu and all(is_plain_linear(module) for module in projections):
            return SmolLM2SwiGLUFunction.apply(x, *(module.weight for module in projections))
        # Without grad (generation, evaluation) the function has nothing to save and only adds per-call overhead;
        # wrapped projections (LoRA adapters, quantised or hooked linears) must run as modules.
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class SmolLM2Attention(nn.Module):
    """Grouped-query self-attention: num_attention_heads query heads share num_key_value_heads key/value heads."""

    def __init__(self, config: SmolLM2Config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx  # which layer of the cache this attention writes
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)

        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (batch, heads, seq, head_dim)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (batch, kv_heads, seq, head_dim)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        cos, signed_sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, signed_sin)

        if cache is not None:
            # returns every key/value seen so far: (batch, kv_heads, past + seq, head_dim)
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx)

        attention_interface = (
            eager_attention_forward if self.config._attn_implementation == "eager" else sdpa_attention_forward
        )
        attn_output = attention_interface(
            self, query_states, key_states, value_states, attention_mask, scaling=self.scaling
        )
        attn_output = attn_output.transpose(1, 2).reshape(*input_shape, -1)  # (batch, seq, heads * head_dim)
        return self.o_proj(attn_output)


class SmolLM2DecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block. GradientCheckpointingLayer recomputes it in backward once checkpointing is enabled, and then
    drops the `cache` keyword, so hidden_states must stay positional and the cache a keyword."""

    def __init__(self, config: SmolLM2Config, layer_idx: int):
        super().__init__()
        self.self_attn = SmolLM2Attention(config, layer_idx)
        self.mlp = SmolLM2MLP(config)
        self.input_layernorm = SmolLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = SmolLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states = residual + self.self_attn(hidden_states, position_embeddings, attention_mask, cache)
        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        return residual + self.mlp(hidden_states)


class SmolLM2PreTrainedModel(PreTrainedModel):
    config_class = SmolLM2Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SmolLM2DecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, SmolLM2RMSNorm):
            nn.init.ones_(module.weight)


class SmolLM2Model(SmolLM2PreTrainedModel):
    def __init__(self, config: SmolLM2Config):
        super().__init__(config)
        # No padding_idx, unlike Llama's embedding: it would freeze the gradient of the pad token's row, and the
        # GGUF/Instruct configs name a real token (<|im_end|>) as pad.
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [SmolLM2DecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = SmolLM2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = SmolLM2RotaryEmbedding(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """attention_mask: (batch, cached + new tokens), 1 for real tokens and 0 for (left) padding.

        position_ids default to positions after the cached tokens; with left padding pass them (generate() does,
        from the attention mask) so that every row starts at 0.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        if kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
            raise ValueError("SmolLM2 returns neither attentions nor per-layer hidden states")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        # A training forward never reads a cache back, and filling one copies every layer's keys and values.
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)

        past_length = cache.get_seq_length() if cache is not None else 0
        query_length = inputs_embeds.shape[1]
        if position_ids is None:
            position_ids = torch.arange(past_length, past_length + query_length, device=inputs_embeds.device)[None]

        mask = causal_attention_mask(attention_mask, query_length, past_length, inputs_embeds.device)
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)

        hidden_states = inputs_embeds
        for decoder_layer in self.layers:
            hidden_states = decoder_layer(
                hidden_states, position_embeddings=position_embeddings, attention_mask=mask, cache=cache
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache)


class SmolLM2ForCausalLM(SmolLM2PreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: SmolLM2Config):
        super().__init__(config)
        self.model = SmolLM2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: torch.Tensor | int | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """labels: (batch, seq) token ids, -100 where no loss is taken; shifted inside (position t predicts t+1).

        With labels the loss is the token-mean cross-entropy, or the token sum divided by `num_items_in_batch` when
        the Trainer passes it (gradient accumulation), as transformers' causal-LM loss; `logits` is then None,
        because the chunked loss never holds them. Without labels, logits are returned for the last
        `logits_to_keep` positions (0 = all), so that generate() projects only the last one.
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state

        loss = logits = None
        if labels is not None:
            loss = self.causal_lm_loss(hidden_states, labels, num_items_in_batch)
        else:
            kept_positions = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = self.lm_head(hidden_states[:, kept_positions, :])
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache)

    def causal_lm_loss(
        self,
        hidden_states: torch.Tensor,
        labels: torch.LongTensor,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Shifted cross-entropy of lm_head(hidden_states) against labels, without materialising the logits."""
        # Shift by padding the labels rather than slicing the hidden states: no copy of the activations.
        shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:].reshape(-1)  # (batch * seq,)
        hidden_states = hidden_states.reshape(-1, hidden_states.shape[-1])  # (batch * seq, hidden)
        loss_sum = SmolLM2LinearCrossEntropy.apply(
            hidden_states,
            self.lm_head.weight,
            shift_labels.to(hidden_states.device),
            self.config.loss_chunk_size,
            torch.is_grad_enabled(),
        )
        if num_items_in_batch is None:
            num_items_in_batch = (shift_labels != IGNORE_INDEX).sum()
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss_sum.device)
        return loss_sum / num_items_in_batch


__all__ = ["SmolLM2PreTrainedModel", "SmolLM2Model", "SmolLM2ForCausalLM"]


# save_pretrained then writes `auto_map` into config.json and copies both .py files, so the saved folder loads
# anywhere with trust_remote_code=True.
SmolLM2Config.register_for_auto_class()
SmolLM2ForCausalLM.register_for_auto_class("AutoModelForCausalLM")
# Importing this module is the one way to use the classes locally, so it also maps model_type "smollm2" for the
# Auto classes (no trust_remote_code needed in this process); exist_ok because the Hub copy registers itself too.
AutoConfig.register("smollm2", SmolLM2Config, exist_ok=True)
AutoModelForCausalLM.register(SmolLM2Config, SmolLM2ForCausalLM, exist_ok=True)
