"""The tokenizer, the model's config and the model a run trains: from scratch, or from weights (a folder, a Hub id
or a GGUF file)."""

import os

import torch
from transformers import AutoTokenizer
from transformers.utils import SAFE_WEIGHTS_NAME, is_flash_attn_2_available

from configuration_smollm2 import SmolLM2Config
from modeling_smollm2 import SmolLM2ForCausalLM
from pretraining.arguments import ModelArguments
from pretraining.data import DataArguments
from pretraining.errors import ArgumentError
from pretraining.hub import from_hub_or_local

# the real SmolLM2 tokenizer ships with the project: an absolute path to it works from any folder
BUNDLED_TOKENIZER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                                 "smollm2_tokenizer")


def load_tokenizer(model_args: ModelArguments):
    """The tokenizer; from the GGUF file when it names the folder that --gguf_file is in (a GGUF holds one)."""
    gguf = model_args.gguf_file if model_args.tokenizer_name == model_args.model_name_or_path else None
    return from_hub_or_local(AutoTokenizer.from_pretrained, model_args.tokenizer_name, "tokenizer",
                             hint=f"offline, the SmolLM2 tokenizer is --tokenizer_name {BUNDLED_TOKENIZER}",
                             **({"gguf_file": gguf} if gguf else {}))


def apply_overrides(config: SmolLM2Config, overrides: str) -> SmolLM2Config:
    """'k=v,k=v' onto `config` through transformers' `update_from_string`, as run_clm.py does (each value converted
    to the type of the field it replaces). On top: each entry checked first, so that a mistake is named in one line,
    and the result validated again (shapes that don't divide, non-positive sizes ...)."""
    items = [item.strip() for item in overrides.split(",") if item.strip()]
    for item in items:
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise ArgumentError(f"config_overrides entry {item!r} is not key=value")
        if key not in config.to_dict():
            raise ArgumentError(f"config_overrides: unknown config field {key!r}")
        try:
            config.update_from_string(f"{key}={value}")
        except (ValueError, TypeError) as err:
            raise ArgumentError(f"config_overrides: {key}={value!r} does not fit {key} ({err})") from None
    values = config.to_dict()
    if not any(item.partition("=")[0].strip() == "head_dim" for item in items):
        values.pop("head_dim", None)  # derived from hidden_size and num_attention_heads
    return SmolLM2Config(**values)


def build_config(model_args: ModelArguments, data_args: DataArguments, tokenizer) -> SmolLM2Config:
    if model_args.model_name_or_path:
        if model_args.config_overrides:
            raise ArgumentError("--config_overrides cannot change the shape of --model_name_or_path weights")
        config = from_hub_or_local(SmolLM2Config.from_pretrained, model_args.model_name_or_path, "model config",
                                   **({"gguf_file": model_args.gguf_file} if model_args.gguf_file else {}))
    elif model_args.config_name:
        config = from_hub_or_local(SmolLM2Config.from_pretrained, model_args.config_name, "model config")
    else:
        config = SmolLM2Config()
    if not model_args.model_name_or_path:
        # from scratch the vocabulary follows the tokenizer, so every id has an embedding
        config.vocab_size = len(tokenizer)
        config.bos_token_id = tokenizer.bos_token_id
        config.eos_token_id = tokenizer.eos_token_id
        if model_args.config_overrides:
            config = apply_overrides(config, model_args.config_overrides)
    elif config.vocab_size < len(tokenizer):
        raise ArgumentError(f"tokenizer {model_args.tokenizer_name} has {len(tokenizer)} tokens but the model's "
                            f"vocabulary only {config.vocab_size}")
    if data_args.block_size > config.max_position_embeddings:
        raise ArgumentError(f"block_size {data_args.block_size} is above max_position_embeddings "
                            f"{config.max_position_embeddings}")
    if model_args.attn_implementation == "flash_attention_2" and not is_flash_attn_2_available():
        raise ArgumentError("attn_implementation flash_attention_2 needs a CUDA GPU and the flash-attn package "
                            "(pip install flash-attn); use sdpa here")
    config._attn_implementation = model_args.attn_implementation
    # smollm2_ops' backward passes and chunked loss: faster, less memory; the model runs them only where measured.
    # Runtime settings: no saved config.json holds them.
    config.use_speed_ops = True
    config.chunked_loss = model_args.chunked_loss
    return config


def build_model(model_args: ModelArguments, config: SmolLM2Config, checkpoint: str | None = None) -> SmolLM2ForCausalLM:
    """The model a run trains: a resumed run's from its `checkpoint` (the Trainer loads those weights again with the
    optimizer; a restart never downloads or converts the starting weights again), else the starting weights
    (--model_name_or_path), else new ones. A checkpoint whose weights are sharded (FSDP's SHARDED_STATE_DICT) starts
    from the starting weights, which the Trainer's load then replaces."""
    if checkpoint and os.path.isfile(os.path.join(checkpoint, SAFE_WEIGHTS_NAME)):
        return SmolLM2ForCausalLM.from_pretrained(checkpoint, config=config, dtype=torch.float32)
    if not model_args.model_name_or_path:
        return SmolLM2ForCausalLM(config)
    kwargs = {"gguf_file": model_args.gguf_file} if model_args.gguf_file else {}
    # fp32 master weights: bf16 is autocast only. From a GGUF file, an ordinary (dequantized) model: see
    # SmolLM2PreTrainedModel.from_pretrained
    return from_hub_or_local(SmolLM2ForCausalLM.from_pretrained, model_args.model_name_or_path, "model",
                             config=config, dtype=torch.float32, **kwargs)
