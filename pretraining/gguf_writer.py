"""Write a SmolLM2 model and its tokenizer as a GGUF file for llama.cpp and Ollama (architecture `llama`).

Used by `export.py --format gguf` (`serving.export_model`). The layout is what llama.cpp's `convert_hf_to_gguf.py`
writes for a Llama checkpoint, built from the `gguf` package's own pieces: `GGUFWriter` for the file, its Llama tensor-name map
(`model.layers.0.self_attn.q_proj.weight` -> `blk.0.attn_q.weight`), `gguf.quants` for bf16 and q8_0, and
`SpecialVocab` for the merges, special-token ids and chat template. The tokenizer is a GPT-2-style byte-level BPE
(`tokenizer.ggml.model = gpt2`); llama.cpp names SmolLM2's pre-tokenizer "smollm".
"""

import json
import os

import numpy as np
import torch

# --dtype: (GGML tensor type of the weight matrices, the file type llama.cpp records; "mostly": norms stay f32)
GGUF_DTYPES = {"f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"),
               "q8_0": ("Q8_0", "MOSTLY_Q8_0")}
# llama.cpp's name for the pre-tokenizer (regex split before BPE) of the SmolLM/SmolLM2 vocabulary: GPT-2's regex
# with each digit on its own, which SmolLM2's merges already give (its vocabulary has no multi-digit tokens)
PRE_TOKENIZER = "smollm"


def permute_for_ggml(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """q_proj/k_proj rows from transformers' rotate-half RoPE layout to GGML's interleaved pairs, as llama.cpp's
    converter does (transformers' GGUF loader undoes it when reading)."""
    # (heads, 2 halves, head_dim / 2, in) -> (heads, head_dim / 2, 2, in): row i of each half becomes pair i
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def check_gguf_supported(config, tokenizer_dir: str) -> None:
    """Raise ValueError for what this writer cannot express: RoPE scaling other than linear, and a tokenizer that
    is not a byte-level BPE."""
    rope_type = config.rope_parameters.get("rope_type", "default")
    if rope_type not in ("default", "linear"):
        raise ValueError(f"GGUF export supports rope_type 'default' and 'linear', not {rope_type!r}; "
                         "use --format llama")
    path = os.path.join(tokenizer_dir, "tokenizer.json")
    if not os.path.isfile(path):
        raise ValueError(f"GGUF export needs the fast tokenizer file tokenizer.json in {tokenizer_dir}")
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    if spec["model"]["type"] != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise ValueError(f"GGUF export needs a byte-level BPE tokenizer (GPT-2 style, like SmolLM2's); "
                         f"{path} holds a {spec['model']['type']} one")


def vocab_tokens(tokenizer, vocab_size: int):
    """(tokens, token types) for ids 0..vocab_size-1, as llama.cpp's converter lists a GPT-2 BPE vocabulary:
    the byte-level strings, special added tokens as CONTROL, other added tokens USER_DEFINED, and ids the
    tokenizer does not use (a model vocabulary padded past the tokenizer) as UNUSED placeholders."""
    import gguf

    by_id = {token_id: token for token, token_id in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for token_id in range(vocab_size):
        if token_id not in by_id:
            tokens.append(f"[PAD{token_id}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[token_id])
            types.append(gguf.TokenType.NORMAL if token_id not in added else
                         gguf.TokenType.CONTROL if added[token_id].special else gguf.TokenType.USER_DEFINED)
    return tokens, types


def adds_special(tokenizer, first: bool) -> bool:
    """Whether encoding puts the BOS (first=True) or EOS token around the text: llama.cpp must do the same."""
    with_special = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    token_id = tokenizer.bos_token_id if first else tokenizer.eos_token_id
    end = with_special[0] if first else with_special[-1]
    return len(with_special) > len(plain) and token_id is not None and end == token_id


def add_hyperparameters(writer, config, name: str, dtype: str) -> None:
    import gguf

    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    if config.rope_parameters.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(config.rope_parameters["factor"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(getattr(gguf.LlamaFileType, GGUF_DTYPES[dtype][1]))
    if dtype == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def add_tokenizer(writer, tokenizer, tokenizer_dir: str, vocab_size: int) -> None:
    import gguf

    tokens, types = vocab_tokens(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZER)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_add_space_prefix(False)  # byte-level BPE marks spaces itself (Ġ)
    # merges from tokenizer.json; bos/eos/unk/pad ids from tokenizer_config.json and config.json; the chat template
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=vocab_size)
    # measured rather than parsed: what the tokenizer does is what llama.cpp must repeat
    special.add_special_token.update(bos=adds_special(tokenizer, first=True), eos=adds_special(tokenizer, first=False))
    special.add_to_gguf(writer, quiet=True)


def gguf_tensor(weight: torch.Tensor, dtype: str):
    """(numpy data, GGML type) of one weight at `dtype`. 1-D tensors (the norms) stay f32 as in llama.cpp's files;
    a q8_0 row that is not a whole number of 32-value blocks falls back to f16, as llama.cpp's converter does."""
    import gguf

    data = weight.detach().to(torch.float32).cpu().numpy()
    kind = "f32" if data.ndim == 1 else dtype
    if kind == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]:
        kind = "f16"
    qtype = getattr(gguf.GGMLQuantizationType, GGUF_DTYPES[kind][0])
    if kind == "f32":
        return np.ascontiguousarray(data), qtype
    if kind == "f16":
        return data.astype(np.float16), qtype
    return gguf.quants.quantize(data, qtype), qtype  # bf16 and q8_0: packed bytes in numpy integer arrays


def write_gguf(model, tokenizer, tokenizer_dir: str, path: str, dtype: str, name: str) -> None:
    """Write `model` (a SmolLM2ForCausalLM) and `tokenizer` (whose files are in `tokenizer_dir`) to `path`."""
    import gguf

    config = model.config
    check_gguf_supported(config, tokenizer_dir)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    add_hyperparameters(writer, config, name, dtype)
    add_tokenizer(writer, tokenizer, tokenizer_dir, config.vocab_size)
    for hf_name, weight in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp uses token_embd for the output when there is no output.weight
        if hf_name.endswith("self_attn.q_proj.weight"):
            weight = permute_for_ggml(weight, config.num_attention_heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            weight = permute_for_ggml(weight, config.num_key_value_heads)
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"no GGUF name for the weight {hf_name}")
        data, qtype = gguf_tensor(weight, dtype)
        writer.add_tensor(gguf_name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
