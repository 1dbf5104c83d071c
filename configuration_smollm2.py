"""Configuration of SmolLM2, a Llama-architecture decoder (https://huggingface.co/HuggingFaceTB/SmolLM2-135M).

The defaults are the published SmolLM2-135M; `SmolLM2Config.tiny()` is the small preset for tests. A Llama
`config.json` (model_type "llama", as on the Hub) or the Llama config that transformers reads out of a GGUF file is
accepted as is, so official checkpoints load without conversion:

    config = SmolLM2Config.from_pretrained("HuggingFaceTB/SmolLM2-135M")
    tiny = SmolLM2Config.tiny(vocab_size=49152)

This file travels to the Hub next to `modeling_smollm2.py` and imports only `transformers`.
"""

from transformers import PretrainedConfig
from transformers.activations import ACT2FN
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS


# What a saved folder serves as remote code (`AutoModel.from_pretrained(folder, trust_remote_code=True)` ...)
REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_smollm2.SmolLM2Config",
    "AutoModel": "modeling_smollm2.SmolLM2Model",
    "AutoModelForCausalLM": "modeling_smollm2.SmolLM2ForCausalLM",
}


class SmolLM2Config(PretrainedConfig):
    r"""
    Configuration of a [`SmolLM2ForCausalLM`]. Fields and names follow `LlamaConfig`; the defaults give SmolLM2-135M
    (134,515,008 parameters).

    Args:
        vocab_size (`int`, *optional*, defaults to 49152):
            Number of token ids; rows of `embed_tokens` (and of the tied `lm_head`).
        hidden_size (`int`, *optional*, defaults to 576):
            Width of the residual stream.
        intermediate_size (`int`, *optional*, defaults to 1536):
            Width of the SwiGLU feed-forward layer.
        num_hidden_layers (`int`, *optional*, defaults to 30):
            Number of decoder layers.
        num_attention_heads (`int`, *optional*, defaults to 9):
            Number of query heads; must divide `hidden_size`.
        num_key_value_heads (`int`, *optional*, defaults to 3):
            Number of key/value heads (grouped-query attention); must divide `num_attention_heads`.
        head_dim (`int`, *optional*):
            Width of one head. Derived as `hidden_size // num_attention_heads`; accepted from Llama configs only when
            it equals that value (SmolLM2 has no decoupled head width).
        hidden_act (`str`, *optional*, defaults to `"silu"`):
            Activation of the gate projection, a key of `transformers.activations.ACT2FN`.
        max_position_embeddings (`int`, *optional*, defaults to 8192):
            Longest sequence the model was trained for. RoPE does not enforce it; it sizes static caches.
        initializer_range (`float`, *optional*, defaults to 1/24 = 0.041666666666666664):
            Standard deviation of the normal init of every linear and embedding weight (the published value).
        rms_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon added to the mean square in every RMSNorm.
        rope_parameters (`dict`, *optional*, defaults to `{"rope_type": "default", "rope_theta": 100000.0}`):
            The rotary position embedding, as in `LlamaConfig`: `rope_theta` (base period) and `rope_type`, one of
            "default" or a key of `transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS` ("linear", "dynamic",
            "yarn", "llama3", ...) with that type's fields (`factor`, ...). A legacy top-level `rope_theta` or
            `rope_scaling` (older configs, including this app's earlier `config.json`) is folded into it by
            transformers' RoPE standardization, and the dict is validated by transformers' RoPE checks.
        use_cache (`bool`, *optional*, defaults to `True`):
            Whether the forward pass returns a key/value cache for incremental decoding.
        pad_token_id (`int`, *optional*):
            Padding id. Unused by the model (no embedding row is frozen for it); kept for the tokenizer and generate.
        bos_token_id (`int`, *optional*, defaults to 0):
            Beginning-of-sequence id (`<|endoftext|>` in the SmolLM2 tokenizer).
        eos_token_id (`int` or `list[int]`, *optional*, defaults to 0):
            End-of-sequence id(s) that stop generation.
        tie_word_embeddings (`bool`, *optional*, defaults to `True`):
            Whether `lm_head.weight` is `model.embed_tokens.weight` (SmolLM2 ties them).
        attention_bias (`bool`, *optional*, defaults to `False`):
            Llama's bias switch for q/k/v/o. SmolLM2 has no biases, so only `False` is accepted.
        mlp_bias (`bool`, *optional*, defaults to `False`):
            Llama's bias switch for the feed-forward layer. Only `False` is accepted, for the same reason.
        attention_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on the attention weights in training, as Llama's (SmolLM2 was trained without).

    Runtime settings (keyword arguments, or attributes set on a loaded config, as `attn_implementation` is): never
    written to `config.json`, so a saved folder holds only the architecture. A `config.json` written by an earlier
    version of the training app, which saved them, loads as before.

        use_speed_ops (`bool`, defaults to `False`):
            Run the hand-written ops of `smollm2_ops.py` (RMSNorm, RoPE and SwiGLU backward passes that keep fewer
            activations, and the chunked loss below) instead of the plain PyTorch path, where they were measured to
            pay: training on CPU, not under torch.compile. The training app turns it on; off, the model is exactly
            transformers' Llama computation. With labels, `logits` is then `None` (the chunked loss never holds them).
        chunked_loss (`bool`, defaults to `False`):
            With labels, compute the loss `loss_chunk_size` tokens at a time in plain PyTorch ops, on every device and
            under torch.compile, and return `logits=None`: the (batch, seq, vocab) logits, their fp32 upcast and
            softmax are never held (3.2 GB per fp32 copy at 8 x 2048 x 49152). Same values and gradients as the
            plain loss. Where `use_speed_ops` applies, its chunked loss runs instead.
        loss_chunk_size (`int`, defaults to 1024):
            Tokens per chunk of the loss when labels are given and `chunked_loss` or `use_speed_ops` applies. Logits
            are computed and turned into gradients in one `loss_chunk_size x vocab_size` buffer reused by every chunk
            (201 MB in fp32 at 1024 x 49152, plus a bf16 twin under autocast) instead of several
            `batch x seq x vocab_size` ones (3.2 GB each at 8 x 2048 x 49152). Smaller saves memory; larger issues
            fewer, bigger matmuls.

    Other Llama keys are accepted at the values that mean "plain SmolLM2": `rope_interleaved=False` (nanotron), and
    `pretraining_tp` (a tensor-parallel layout hint that changes no maths). `base_model_tp_plan` and
    `base_model_pp_plan` are Llama's tensor- and pipeline-parallel plans.
    A Llama config's `model_type="llama"` stays on the instance while `to_dict()` writes the class's "smollm2":
    transformers' GGUF reader maps tensor names by the instance's model_type, which is what lets
    `SmolLM2ForCausalLM.from_pretrained(folder, gguf_file=...)` load a Llama GGUF.
    """

    model_type = "smollm2"
    default_theta = 100000.0  # rope_theta when a config names none (transformers' RoPE standardization reads it)
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }
    base_model_pp_plan = {
        "embed_tokens": (["input_ids"], ["inputs_embeds"]),
        "layers": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "norm": (["hidden_states"], ["hidden_states"]),
    }

    vocab_size: int = 49152
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_hidden_layers: int = 30
    num_attention_heads: int = 9
    num_key_value_heads: int = 3
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 8192
    initializer_range: float = 0.041666666666666664
    rms_norm_eps: float = 1e-5
    rope_parameters: dict | None = None
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 0
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    mlp_bias: bool = False
    attention_dropout: float = 0.0

    # runtime settings (see the docstring): class defaults, set per instance, never serialized
    use_speed_ops = False
    chunked_loss = False
    loss_chunk_size = 1024
    RUNTIME_SETTINGS = ("use_speed_ops", "chunked_loss", "loss_chunk_size")

    def __post_init__(self, **kwargs):
        rope_interleaved = kwargs.pop("rope_interleaved", False)
        if rope_interleaved:
            raise ValueError(f"rope_interleaved={rope_interleaved} is not supported: SmolLM2 rotates halves")
        kwargs.pop("pretraining_tp", None)
        for name in self.RUNTIME_SETTINGS:
            if name in kwargs:
                setattr(self, name, kwargs.pop(name))

        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
        for name in ("rms_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {name}={value!r}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be divisible by num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} must be divisible by "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.head_dim != self.hidden_size // self.num_attention_heads:
            raise ValueError(
                f"head_dim={self.head_dim} must equal hidden_size // num_attention_heads = "
                f"{self.hidden_size // self.num_attention_heads}"
            )
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not a transformers activation (ACT2FN)")
        for name in ("attention_bias", "mlp_bias"):
            if getattr(self, name):
                raise ValueError(f"{name}={getattr(self, name)} is not supported: SmolLM2 has no biases")
        if not (isinstance(self.attention_dropout, (int, float)) and 0.0 <= self.attention_dropout < 1.0):
            raise ValueError(f"attention_dropout must be in [0, 1), got attention_dropout={self.attention_dropout!r}")
        # folds a top-level rope_theta / rope_scaling (legacy and Llama configs) into rope_parameters
        super().__post_init__(**kwargs)
        rope_type = self.rope_parameters.get("rope_type")
        if rope_type != "default" and rope_type not in ROPE_INIT_FUNCTIONS:
            raise ValueError(
                f"rope_type={rope_type!r} is not supported: use 'default' or one of {sorted(ROPE_INIT_FUNCTIONS)}"
            )
        rope_theta = self.rope_parameters.get("rope_theta")
        if not isinstance(rope_theta, (int, float)) or isinstance(rope_theta, bool) or rope_theta <= 0:
            raise ValueError(f"rope_theta must be a positive number, got rope_theta={rope_theta!r}")
        self.validate_rope()
        for name in ("use_speed_ops", "chunked_loss"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {name}={getattr(self, name)!r}")
        if not isinstance(self.loss_chunk_size, int) or isinstance(self.loss_chunk_size, bool) or self.loss_chunk_size <= 0:
            raise ValueError(f"loss_chunk_size must be a positive integer, got loss_chunk_size={self.loss_chunk_size!r}")
        # save_pretrained adds only the saved class to auto_map; the folder serves the base model too
        self.auto_map = {**REMOTE_CODE_AUTO_MAP, **(getattr(self, "auto_map", None) or {})}

    def to_dict(self) -> dict:
        """The architecture, as `config.json` holds it: without the runtime settings."""
        output = super().to_dict()
        for name in self.RUNTIME_SETTINGS:
            output.pop(name, None)
        return output

    @classmethod
    def tiny(cls, **overrides) -> "SmolLM2Config":
        """The test preset: 2 layers of width 64, GQA with 4 query and 2 key/value heads, vocabulary 512.

        Pass `vocab_size=49152` (or `len(tokenizer)`) when token ids come from the real SmolLM2 tokenizer.
        """
        shape = dict(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
        )
        return cls(**{**shape, **overrides})


# Saving any SmolLM2Config (alone, or with a model) copies this file and names it in `auto_map`, so that every folder
# save_pretrained writes loads anywhere with trust_remote_code=True.
SmolLM2Config.register_for_auto_class()

__all__ = ["SmolLM2Config"]
