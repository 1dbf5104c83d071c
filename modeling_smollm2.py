"""SmolLM2, a Llama-architecture decoder, written the way transformers 5.x writes its Llama.

Parameter names are LlamaForCausalLM's, so official checkpoints load with no key map and any Llama state dict copies
in strictly. Attention goes through transformers' attention-function registry (eager, sdpa, flash_attention_2,
flex_attention, ...), masks through its masking utilities, RoPE scaling through its RoPE functions, and per-layer
hidden states and attentions are recorded the way its models record them.

With `config.use_speed_ops=True` (a runtime setting, never saved; the training app sets it) RMSNorm, RoPE, the SwiGLU MLP and the loss run the
hand-written ops of `smollm2_ops.py` when training on CPU, and with `config.chunked_loss=True` the loss runs chunked
in plain ops there on every device; everything else, and every other case, is this file.

Loading (official SmolLM2 checkpoints are Llama-format: config.json with model_type "llama"):
    SmolLM2ForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M")           # Llama-format folder or Hub id
    SmolLM2ForCausalLM.from_pretrained(folder, gguf_file="x.gguf")            # GGUF, dequantised by transformers
    AutoModelForCausalLM.from_pretrained(saved_folder, trust_remote_code=True)  # a folder saved from this class

This file travels to the Hub as remote code next to `configuration_smollm2.py` and `smollm2_ops.py`; it imports
only torch, transformers and those two.
"""

from collections.abc import Callable

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.integrations import use_kernel_forward_from_hub, use_kernelized_func
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, slice_logits_to_keep
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs


try:
    from .configuration_smollm2 import SmolLM2Config
except ImportError:  # imported as a top-level module rather than from a Hub package
    from configuration_smollm2 import SmolLM2Config
try:
    from . import smollm2_ops
    from .smollm2_ops import speed_ops_apply  # a relative import: save_pretrained copies the file (remote code)
except ImportError:  # imported as a top-level module rather than from a Hub package
    import smollm2_ops
    from smollm2_ops import speed_ops_apply


@use_kernel_forward_from_hub("RMSNorm")
class SmolLM2RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6, config: SmolLM2Config | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps
        self.config = config  # read for use_speed_ops only

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if speed_ops_apply(self.config, hidden_states):
            return smollm2_ops.rms_norm(hidden_states, self.weight, self.variance_epsilon)
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)

    def extra_repr(self):
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class SmolLM2RotaryEmbedding(nn.Module):
    """cos and sin of every position, computed once per forward and shared by every layer; `rope_parameters` picks
    the RoPE type (default, linear, dynamic, yarn, llama3, ...) from transformers' ROPE_INIT_FUNCTIONS."""

    def __init__(self, config: SmolLM2Config):
        super().__init__()
        self.max_seq_len_cached = config.max_position_embeddings
        self.original_max_seq_len = config.max_position_embeddings
        self.config = config
        self.rope_type = config.rope_parameters["rope_type"]
        rope_init_fn: Callable = self.compute_default_rope_parameters
        if self.rope_type != "default":
            rope_init_fn = ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = rope_init_fn(config)
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)
        self.original_inv_freq = nn.Buffer(inv_freq.clone(), persistent=False)  # dynamic RoPE resets to it

    @staticmethod
    def compute_default_rope_parameters(config: SmolLM2Config, **kwargs) -> tuple[torch.Tensor, float]:
        """Inverse frequencies of the original RoPE, `1 / theta^(2i / head_dim)`, and a cos/sin scale of 1."""
        base = config.rope_parameters["rope_theta"]
        dim = config.head_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        return inv_freq, 1.0

    @dynamic_rope_update  # recomputes inv_freq for "dynamic" RoPE beyond the trained length; else a no-op
    def forward(self, x: torch.Tensor, position_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)  # (batch, seq, head_dim)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension."""
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


@use_kernel_forward_from_hub("rotary_pos_emb")
def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    """Rotates q and k, (batch, heads, seq, head_dim), by cos and sin of shape (batch, seq, head_dim): each pair
    (i, i + head_dim / 2) turned by its position's angle."""
    cos = cos.unsqueeze(unsqueeze_dim)  # broadcast over heads
    sin = sin.unsqueeze(unsqueeze_dim)
    q_embed = (q * cos) + (rotate_half(q) * sin)
    k_embed = (k * cos) + (rotate_half(k) * sin)
    return q_embed, k_embed


class SmolLM2MLP(nn.Module):
    def __init__(self, config: SmolLM2Config):
        super().__init__()
        self.config = config
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if speed_ops_apply(self.config, x) and smollm2_ops.swiglu_applies(self):
            return smollm2_ops.swiglu_mlp(self, x)
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


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
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out. attention_mask is additive, (batch, 1, q_len, kv_len), from create_causal_mask.
    Returns the output (batch, q_len, heads, head_dim) and the weights (batch, heads, q_len, kv_len)."""
    key_states = repeat_kv(key, module.num_key_value_groups)
    value_states = repeat_kv(value, module.num_key_value_groups)

    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask

    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value_states)
    attn_output = attn_output.transpose(1, 2).contiguous()
    return attn_output, attn_weights


@use_kernelized_func(apply_rotary_pos_emb)
class SmolLM2Attention(nn.Module):
    """Grouped-query self-attention: num_attention_heads query heads share num_key_value_heads key/value heads."""

    def __init__(self, config: SmolLM2Config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx  # which layer of the cache this attention writes
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(config.num_attention_heads * self.head_dim, config.hidden_size, bias=False)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)

        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (batch, heads, seq, head_dim)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (batch, kv_heads, seq, head_dim)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        cos, sin = position_embeddings
        if speed_ops_apply(self.config, query_states):
            query_states, key_states = smollm2_ops.apply_rotary_pos_emb(query_states, key_states, cos, sin)
        else:
            query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)

        if cache is not None:
            # every key/value seen so far: (batch, kv_heads, past + seq, head_dim)
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )

        attn_output = attn_output.reshape(*input_shape, -1).contiguous()  # (batch, seq, heads * head_dim)
        attn_output = self.o_proj(attn_output)
        return attn_output, attn_weights


class SmolLM2DecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block; GradientCheckpointingLayer recomputes it in backward once checkpointing is enabled."""

    def __init__(self, config: SmolLM2Config, layer_idx: int):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.self_attn = SmolLM2Attention(config=config, layer_idx=layer_idx)
        self.mlp = SmolLM2MLP(config)
        self.input_layernorm = SmolLM2RMSNorm(config.hidden_size, config.rms_norm_eps, config)
        self.post_attention_layernorm = SmolLM2RMSNorm(config.hidden_size, config.rms_norm_eps, config)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        hidden_states, _ = self.self_attn(
            hidden_states=hidden_states,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = residual + hidden_states

        residual = hidden_states
        hidden_states = self.post_attention_layernorm(hidden_states)
        hidden_states = self.mlp(hidden_states)
        hidden_states = residual + hidden_states
        return hidden_states


class SmolLM2PreTrainedModel(PreTrainedModel):
    config: SmolLM2Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SmolLM2DecoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _can_compile_fullgraph = True
    _supports_attention_backend = True
    _can_record_outputs = {
        "hidden_states": SmolLM2DecoderLayer,
        "attentions": SmolLM2Attention,
    }

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' loading, plus: a model read from a GGUF file whose weights transformers dequantized into plain
        tensors (its GGUF loader for Llama) is an ordinary model, as if read from safetensors. transformers leaves it
        marked quantized, with `quantization_config` in its config, which save_pretrained and the Trainer refuse."""
        model = super().from_pretrained(*args, **kwargs)
        quantizer = getattr(model, "hf_quantizer", None)
        if kwargs.get("gguf_file") and quantizer is not None and all(
            type(module) is nn.Linear for module in model.modules() if isinstance(module, nn.Linear)
        ) and all(parameter.is_floating_point() for parameter in model.parameters()):
            quantizer.remove_quantization_config(model)
        return model


class SmolLM2Model(SmolLM2PreTrainedModel):
    def __init__(self, config: SmolLM2Config):
        super().__init__(config)
        # No padding_idx, unlike Llama's embedding: it would freeze the gradient of the pad token's row, and the
        # GGUF/Instruct configs name a real token (<|im_end|>) as pad.
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [SmolLM2DecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = SmolLM2RMSNorm(config.hidden_size, config.rms_norm_eps, config)
        self.rotary_emb = SmolLM2RotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        """attention_mask: (batch, cached + new tokens), 1 for real tokens and 0 for padding, or a 4D mask.
        position_ids default to the positions after the cached tokens; packed sequences pass them restarting at 0
        per document (padding-free batches), which the masking utilities turn into a block-diagonal mask."""
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")

        if inputs_embeds is None:
            inputs_embeds: torch.Tensor = self.embed_tokens(input_ids)

        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)

        # The masking utilities look for packed documents (positions restarting) only in position_ids a caller gave:
        # default positions hold one sequence per row. Given to them, defaults would cost a host sync per forward in
        # eager mode and, under torch.compile (where that check cannot run), a full (batch, 1, seq, seq) mask in place
        # of SDPA's is_causal kernel.
        mask_position_ids = position_ids
        if position_ids is None:
            past_seen_tokens = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=mask_position_ids,
        )

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)

        for decoder_layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=causal_mask,
                position_embeddings=position_embeddings,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                **kwargs,
            )

        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache)


class SmolLM2ForCausalLM(SmolLM2PreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}
    _fsdp_plan = {"lm_head": "keep_full_weight"}

    def __init__(self, config: SmolLM2Config):
        super().__init__(config)
        self.model = SmolLM2Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
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
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        """labels: (batch, seq) token ids, -100 where no loss is taken; shifted inside (position t predicts t+1),
        or pass `shift_labels` already shifted. `num_items_in_batch` (from the Trainer) divides the token sum.
        With `chunked_loss`, or `use_speed_ops` on CPU, the loss is chunked and `logits` is None when labels are
        given."""
        outputs: BaseModelOutputWithPast = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )

        hidden_states = outputs.last_hidden_state
        hidden_states = slice_logits_to_keep(hidden_states, logits_to_keep)
        speed_loss = labels is not None and speed_ops_apply(self.config, hidden_states, needs_grad=False)
        if speed_loss or (labels is not None and self.config.chunked_loss):
            # never holds the (batch, seq, vocab) logits
            loss = smollm2_ops.causal_lm_loss(
                hidden_states, self.lm_head.weight, labels, self.config.loss_chunk_size, speed_op=speed_loss, **kwargs
            )
            logits = None
        else:
            logits = self.lm_head(hidden_states)
            loss = None
            if labels is not None:
                loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)

        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


# Import-time registration, the one side effect a Hub model needs, in every process that imports this file (as for
# an in-library model):
# - the Auto classes map model_type "smollm2", so `AutoModelForCausalLM.from_config(config)` (how transformers' own
#   tests, TRL and PEFT helpers build a model) works; exist_ok: a Hub copy of this file, loaded as remote code,
#   registers the same names;
# - save_pretrained of any of these classes copies this file, the config's and smollm2_ops.py next to the weights and
#   names them in auto_map, so that every saved folder loads anywhere with trust_remote_code=True.
AutoConfig.register("smollm2", SmolLM2Config, exist_ok=True)
AutoModel.register(SmolLM2Config, SmolLM2Model, exist_ok=True)
AutoModelForCausalLM.register(SmolLM2Config, SmolLM2ForCausalLM, exist_ok=True)
SmolLM2Model.register_for_auto_class("AutoModel")
SmolLM2ForCausalLM.register_for_auto_class("AutoModelForCausalLM")


__all__ = ["SmolLM2PreTrainedModel", "SmolLM2Model", "SmolLM2ForCausalLM"]

