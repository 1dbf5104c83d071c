"""Tests of configuration_smollm2.py, modeling_smollm2.py and smollm2_ops.py.

Config defaults and validation, parity with transformers' LlamaForCausalLM (logits, loss, gradients, RoPE scaling),
the transformers user paths (hidden states and attentions, return_dict, past_key_values, static cache, compiled
generate, attention backends, packed sequences), each speed op of smollm2_ops.py against the plain path (values and
gradients), gradient checkpointing, and SDPA against eager. CPU and offline, tiny random models, in process. The real
weights, saved folders in fresh processes and flex attention's compiled kernel are in tests/e2e/.

    python -m pytest tests/unit/test_modeling.py -q
"""

import copy
import json
import re
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import CompileConfig, LlamaConfig, LlamaForCausalLM
from transformers.utils import is_flash_attn_2_available

import modeling_smollm2
import smollm2_ops
from configuration_smollm2 import SmolLM2Config
from helpers import host_syncs
from modeling_smollm2 import SmolLM2ForCausalLM
from smollm2_ops import SmolLM2RMSNormFunction, SmolLM2RotaryFunction, SmolLM2SwiGLUFunction, causal_lm_loss


FLASH_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
LLAMA_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "initializer_range",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
)


def tiny_model(seed=0, **overrides) -> SmolLM2ForCausalLM:
    torch.manual_seed(seed)
    return SmolLM2ForCausalLM(SmolLM2Config.tiny(**overrides)).eval()


def llama_twin(model: SmolLM2ForCausalLM, attn_implementation="eager") -> LlamaForCausalLM:
    """transformers' Llama with the same shape and weights (strict copy)."""
    config = model.config
    llama_config = LlamaConfig(
        **{name: getattr(config, name) for name in LLAMA_FIELDS},
        rope_parameters=copy.deepcopy(config.rope_parameters),
        attn_implementation=attn_implementation,
    )
    llama = LlamaForCausalLM(llama_config).eval()
    llama.load_state_dict(model.state_dict(), strict=True)
    return llama


def left_padded_batch(vocab_size, seed=1):
    """Two rows of 12 tokens, the first left-padded by 4; labels ignore the padding, the first real token of the
    padded row (it is predicted from a pad position, whose output the two models need not agree on) and one more."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, vocab_size, (2, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :4] = 0
    input_ids[0, :4] = 0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[0, 4] = -100
    labels[1, 5] = -100
    return input_ids, attention_mask, position_ids, labels


# ---------------------------------------------------------------------------------------------------- config


def test_defaults_are_the_published_smollm2_135m():
    config = SmolLM2Config()
    expected = dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        hidden_act="silu",
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        attention_dropout=0.0,
        use_speed_ops=False,
        initializer_range=0.041666666666666664,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=None,
        attention_bias=False,
        mlp_bias=False,
        use_cache=True,
    )
    assert {name: getattr(config, name) for name in expected} == expected
    assert config.model_type == "smollm2"

    with torch.device("meta"):
        model = SmolLM2ForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_tiny_preset():
    config = SmolLM2Config.tiny()
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (2, 64, 128)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 2, 16)
    assert SmolLM2Config.tiny(vocab_size=49152).vocab_size == 49152


def test_accepts_the_hub_llama_config():
    # HuggingFaceTB/SmolLM2-135M's config.json, with nanotron's extra keys
    hub_config = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": 576,
        "initializer_range": 0.041666666666666664,
        "intermediate_size": 1536,
        "is_llama_config": True,
        "max_position_embeddings": 8192,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": 9,
        "num_hidden_layers": 30,
        "num_key_value_heads": 3,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_interleaved": False,
        "rope_scaling": None,
        "rope_theta": 100000,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.40.1",
        "use_cache": True,
        "vocab_size": 49152,
    }
    config = SmolLM2Config.from_dict(hub_config)
    assert config.to_dict()["model_type"] == "smollm2"
    assert (config.hidden_size, config.num_key_value_heads, config.rope_parameters["rope_theta"]) == (576, 3, 100000)

    # transformers 5 writes Llama's RoPE as rope_parameters, and head_dim explicitly
    llama5 = dict(hub_config, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, head_dim=64)
    del llama5["rope_scaling"], llama5["rope_theta"]
    assert SmolLM2Config.from_dict(llama5).rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}


# config.json as the app saved it before the model followed transformers' Llama (model_type "smollm2", a top-level
# rope_theta, loss_chunk_size, no rope_parameters or use_speed_ops)
EARLIER_APP_CONFIG = {
    "architectures": ["SmolLM2ForCausalLM"],
    "attention_bias": False,
    "auto_map": {
        "AutoConfig": "configuration_smollm2.SmolLM2Config",
        "AutoModelForCausalLM": "modeling_smollm2.SmolLM2ForCausalLM",
    },
    "bos_token_id": 0,
    "dtype": "float32",
    "eos_token_id": 0,
    "head_dim": 16,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.041666666666666664,
    "intermediate_size": 128,
    "loss_chunk_size": 1024,
    "max_position_embeddings": 512,
    "mlp_bias": False,
    "model_type": "smollm2",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "pad_token_id": None,
    "rms_norm_eps": 1e-05,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "transformers_version": "5.24.0",
    "use_cache": True,
    "vocab_size": 512,
}


def test_loads_a_folder_saved_by_the_earlier_app(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(EARLIER_APP_CONFIG))
    loaded = SmolLM2ForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.rope_parameters == {"rope_type": "default", "rope_theta": 100000.0}
    assert loaded.config.use_speed_ops is False
    input_ids = torch.arange(1, 20)[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, tiny_model()(input_ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(hidden_size=100), "hidden_size=100"),
        (dict(num_key_value_heads=4), "num_key_value_heads=4"),
        (dict(vocab_size=0), "vocab_size=0"),
        (dict(hidden_size=-576), "hidden_size=-576"),
        (dict(intermediate_size=0), "intermediate_size=0"),
        (dict(num_hidden_layers=0), "num_hidden_layers=0"),
        (dict(num_attention_heads=0), "num_attention_heads=0"),
        (dict(num_key_value_heads=-1), "num_key_value_heads=-1"),
        (dict(max_position_embeddings=0), "max_position_embeddings=0"),
        (dict(loss_chunk_size=0), "loss_chunk_size=0"),
        (dict(rms_norm_eps=0.0), "rms_norm_eps=0.0"),
        (dict(rope_theta=-1.0), "rope_theta=-1.0"),
        (dict(hidden_act="swishy"), "hidden_act='swishy'"),
        (dict(rope_parameters={"rope_type": "spiral"}), "rope_type='spiral'"),
        (dict(attention_bias=True), "attention_bias=True"),
        (dict(mlp_bias=True), "mlp_bias=True"),
        (dict(head_dim=32), "head_dim=32"),
        (dict(attention_dropout=1.5), "attention_dropout=1.5"),
        (dict(rope_interleaved=True), "rope_interleaved=True"),
    ],
)
def test_rejects_bad_config(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SmolLM2Config(**overrides)


# ---------------------------------------------------------------------------------------------- Llama parity


def test_state_dict_copies_strictly_both_ways():
    model = tiny_model()
    llama = llama_twin(model)  # Llama <- ours, strict
    restored = tiny_model(seed=1)
    restored.load_state_dict(llama.state_dict(), strict=True)  # ours <- Llama, strict
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, restored.state_dict()[name]), name


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_logits_match_llama_with_left_padding(attn_implementation):
    model = tiny_model(attn_implementation=attn_implementation)
    llama = llama_twin(model)
    input_ids, attention_mask, position_ids, _ = left_padded_batch(model.config.vocab_size)
    with torch.no_grad():
        ours = model(input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        theirs = llama(input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    real = attention_mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("use_speed_ops", [False, True])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("num_items_in_batch", [None, 13])
def test_loss_and_gradients_match_llama(attn_implementation, num_items_in_batch, use_speed_ops):
    model = tiny_model(attn_implementation=attn_implementation, use_speed_ops=use_speed_ops).train()
    llama = llama_twin(model).train()
    input_ids, attention_mask, position_ids, labels = left_padded_batch(model.config.vocab_size)
    kwargs = dict(attention_mask=attention_mask, position_ids=position_ids, labels=labels)
    if num_items_in_batch is not None:
        kwargs["num_items_in_batch"] = torch.tensor(num_items_in_batch)
    ours = model(input_ids, **kwargs)
    theirs = llama(input_ids, **kwargs)
    if use_speed_ops:
        assert ours.logits is None  # the chunked loss never holds them
    else:
        real = attention_mask.bool()  # padded positions' outputs are never read
        torch.testing.assert_close(ours.logits[real], theirs.logits[real], atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=0)

    ours.loss.backward()
    theirs.loss.backward()
    llama_parameters = dict(llama.named_parameters())
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, llama_parameters[name].grad, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize(
    "rope_parameters",
    [
        {"rope_type": "linear", "factor": 2.0},
        {"rope_type": "dynamic", "factor": 2.0},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    ],
    ids=lambda parameters: parameters["rope_type"],
)
def test_rope_scaling_matches_llama(rope_parameters):
    """Past the trained length (max_position_embeddings 32: dynamic RoPE rescales beyond it), as Llama computes it."""
    model = tiny_model(max_position_embeddings=32, rope_parameters=dict(rope_parameters, rope_theta=10000.0))
    assert model.config.rope_parameters["rope_type"] == rope_parameters["rope_type"]
    llama = llama_twin(model)
    input_ids = torch.randint(1, model.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids).logits, llama(input_ids).logits, atol=1e-4, rtol=0)
        plain = tiny_model(max_position_embeddings=32)(input_ids).logits
    assert not torch.allclose(plain, model(input_ids).logits, atol=1e-3)  # the scaling does change the model


def test_loads_a_llama_format_checkpoint(tmp_path):
    model = tiny_model()
    llama_twin(model).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "llama"
    loaded = SmolLM2ForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    input_ids = torch.arange(1, 20)[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, model(input_ids).logits, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------- generate


def test_generate_is_the_same_with_and_without_cache():
    model = tiny_model(hidden_size=128, intermediate_size=256)
    prompt = torch.randint(1, model.config.vocab_size, (1, 7), generator=torch.Generator().manual_seed(2))
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_logits=True)
    cached = model.generate(prompt, use_cache=True, **kwargs)
    uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert cached.sequences.tolist() == uncached.sequences.tolist()
    torch.testing.assert_close(torch.stack(cached.logits), torch.stack(uncached.logits), atol=1e-5, rtol=0)


def test_left_padded_batch_generates_like_each_prompt_alone():
    model = tiny_model(hidden_size=128, intermediate_size=256)
    generator = torch.Generator().manual_seed(3)
    long_prompt = torch.randint(1, model.config.vocab_size, (1, 8), generator=generator)
    short_prompt = torch.randint(1, model.config.vocab_size, (1, 5), generator=generator)
    input_ids = torch.cat([long_prompt, F.pad(short_prompt, (3, 0), value=0)])
    attention_mask = torch.cat([torch.ones(1, 8), F.pad(torch.ones(1, 5), (3, 0))]).long()
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_logits=True)

    batch = model.generate(input_ids, attention_mask=attention_mask, **kwargs)
    for row, prompt in enumerate([long_prompt, short_prompt]):
        alone = model.generate(prompt, **kwargs)
        assert batch.sequences[row, 8:].tolist() == alone.sequences[0, prompt.shape[1] :].tolist()
        batch_logits = torch.stack([step[row] for step in batch.logits])
        torch.testing.assert_close(batch_logits, torch.stack(alone.logits)[:, 0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_cached_continuation_matches_a_full_forward(attn_implementation):
    """Several new tokens after a cache: the causal mask must be offset by the cached length."""
    model = tiny_model(attn_implementation=attn_implementation)
    input_ids = torch.randint(1, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(input_ids).logits
        prefix = model(input_ids[:, :5], use_cache=True)
        # past_key_values=, the name every client outside generate() uses (transformers 5.24 calls it `cache`)
        continued = model(input_ids[:, 5:], past_key_values=prefix.cache, use_cache=True)
    assert continued.cache is prefix.cache and continued.cache.get_seq_length() == 9
    torch.testing.assert_close(continued.logits, full[:, 5:], atol=1e-5, rtol=0)


def test_logits_to_keep():
    model = tiny_model()
    input_ids = torch.arange(1, 10)[None]
    with torch.no_grad():
        full = model(input_ids).logits
        last = model(input_ids, logits_to_keep=1).logits
    assert last.shape == (1, 1, model.config.vocab_size)
    torch.testing.assert_close(last, full[:, -1:])


# ------------------------------------------------------------------------------------- transformers user paths


def test_hidden_states_and_attentions_in_forward_match_llama():
    model = tiny_model(attn_implementation="eager")
    llama = llama_twin(model)
    input_ids = torch.randint(1, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        ours = model(input_ids, output_hidden_states=True, output_attentions=True)
        theirs = llama(input_ids, output_hidden_states=True, output_attentions=True)
    assert len(ours.hidden_states) == model.config.num_hidden_layers + 1  # embeddings, then each layer
    assert len(ours.attentions) == model.config.num_hidden_layers
    assert ours.attentions[0].shape == (2, model.config.num_attention_heads, 9, 9)
    for got, expected in zip(ours.hidden_states + ours.attentions, theirs.hidden_states + theirs.attentions):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # from the config too
    model.config.output_hidden_states = True
    with torch.no_grad():
        assert len(model(input_ids).hidden_states) == model.config.num_hidden_layers + 1


def test_hidden_states_and_attentions_in_generate():
    model = tiny_model(attn_implementation="eager")
    prompt = torch.randint(1, model.config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(12))
    output = model.generate(
        prompt,
        max_new_tokens=4,
        do_sample=False,
        pad_token_id=0,
        return_dict_in_generate=True,
        output_hidden_states=True,
        output_attentions=True,
    )
    assert len(output.hidden_states) == len(output.attentions) == 4  # one entry per generated token
    assert len(output.hidden_states[0]) == model.config.num_hidden_layers + 1
    assert output.attentions[0][0].shape == (1, model.config.num_attention_heads, 6, 6)
    assert output.attentions[-1][0].shape == (1, model.config.num_attention_heads, 1, 9)  # one query, 9 keys


def test_return_dict_false_returns_a_tuple():
    model = tiny_model()
    input_ids = torch.arange(1, 9)[None]
    with torch.no_grad():
        loss, logits, *_ = model(input_ids, labels=input_ids, return_dict=False)
        assert isinstance(model.model(input_ids, return_dict=False), tuple)
        torch.testing.assert_close(logits, model(input_ids).logits)
    assert loss.ndim == 0


@pytest.mark.parametrize("use_speed_ops", [False, True])
def test_shift_labels_are_used_as_given(use_speed_ops):
    """shift_labels (already shifted, e.g. by context-parallel training) replace the shift of labels, as in Llama."""
    model = tiny_model(use_speed_ops=use_speed_ops).train()
    input_ids = torch.randint(1, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(13))
    labels = input_ids.clone()
    labels[:, 3:6] = -100
    shift_labels = F.pad(labels, (0, 1), value=-100)[:, 1:].contiguous()
    loss = model(input_ids, labels=input_ids, shift_labels=shift_labels).loss
    torch.testing.assert_close(loss, model(input_ids, labels=labels).loss)
    assert not torch.allclose(loss, model(input_ids, labels=input_ids).loss)


def greedy(model, prompt, **kwargs):
    return model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0, **kwargs).tolist()


def test_static_cache_and_compiled_generate_match_dynamic_cache():
    model = tiny_model()
    prompt = torch.randint(1, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(14))
    dynamic = greedy(model, prompt)
    assert greedy(model, prompt, cache_implementation="static") == dynamic
    torch._dynamo.reset()
    # a static cache and a compiled forward (generate compiles the decoding step itself); fullgraph, so any graph
    # break (a CPU sync such as bool(mask.all())) fails
    compile_config = CompileConfig(fullgraph=True, backend="aot_eager")
    compiled = greedy(model, prompt, cache_implementation="static", compile_config=compile_config)
    assert compiled == dynamic


def test_flash_attention_2_is_refused_exactly_where_it_is_unavailable():
    """Accepted where transformers finds flash-attn and a CUDA GPU, else refused by transformers' own check, which
    names the missing package (the app's one-line error for it is in tests/unit/test_arguments.py)."""
    config = SmolLM2Config.tiny()
    if is_flash_attn_2_available():
        model = SmolLM2ForCausalLM._from_config(config, attn_implementation="flash_attention_2")
        assert model.config._attn_implementation == "flash_attention_2"
        return
    with pytest.raises(ImportError, match=r"FlashAttention2 has been toggled on, but it cannot be used due to the "
                                          r"following error: the package for FlashAttention2 doesn't seem to be "
                                          r"installed"):
        SmolLM2ForCausalLM._from_config(config, attn_implementation="flash_attention_2")


def test_set_attn_implementation_switches_the_backend():
    model = tiny_model(attn_implementation="sdpa")
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    assert model.model.layers[0].self_attn.config._attn_implementation == "eager"
    input_ids = torch.arange(1, 9)[None]
    with torch.no_grad():
        assert model(input_ids, output_attentions=True).attentions[0] is not None  # eager returns the weights


def test_custom_4d_mask_equals_the_2d_padding_mask():
    model = tiny_model(attn_implementation="eager")
    input_ids, attention_mask, position_ids, _ = left_padded_batch(model.config.vocab_size)
    causal = torch.ones(12, 12).tril().bool()
    allowed = causal[None, None] & attention_mask.bool()[:, None, None, :]  # (batch, 1, query, key)
    allowed |= torch.eye(12, dtype=torch.bool)  # fully padded query rows attend to themselves (never read)
    mask_4d = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    real = attention_mask.bool()
    with torch.no_grad():
        expected = model(input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        got = model(input_ids, attention_mask=mask_4d, position_ids=position_ids).logits
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa", "sdpa compiled"])
def test_packed_sequences_without_padding_equal_each_document_alone(attn_implementation):
    """Padding-free packing (DataCollatorWithFlattening, --document_masking): one row, position_ids restarting at 0
    per document. Under torch.compile too: there SDPA gets the block-diagonal mask."""
    model = tiny_model(attn_implementation=attn_implementation.split()[0])
    generator = torch.Generator().manual_seed(15)
    documents = [torch.randint(1, model.config.vocab_size, (1, n), generator=generator) for n in (5, 8, 3)]
    packed = torch.cat(documents, dim=1)
    position_ids = torch.cat([torch.arange(doc.shape[1]) for doc in documents])[None]
    with torch.no_grad():
        alone = torch.cat([model(doc).logits for doc in documents], dim=1)
        if attn_implementation == "sdpa compiled":
            calls, outputs = compiled_sdpa_calls(model, packed, position_ids=position_ids, use_cache=False)
            assert calls and all(call.attn_mask is not None and not call.is_causal for call in calls)
        else:
            outputs = model(packed, position_ids=position_ids, use_cache=False)  # no cache: a training batch
    torch.testing.assert_close(outputs.logits, alone, atol=1e-5, rtol=0)


def test_flash_attention_kwargs_reach_every_layers_attention_function():
    """cu_seq_lens_q/k and max_length_q/k given to forward (the app's collator gives them with --document_masking
    under flash attention) reach the attention function of every layer as they are, so that flash attention need not
    derive them from position_ids in each layer. Seen through an attention function registered with transformers
    (its registry, as any backend is), which records them and computes SDPA."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    received = []

    def recording_attention(module, query, key, value, attention_mask, **kwargs):
        received.append({name: kwargs.get(name) for name in FLASH_KWARGS})
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("recording_sdpa", recording_attention)
    model = tiny_model(attn_implementation="recording_sdpa")
    cu_seq_lens = torch.tensor([0, 3, 8, 10], dtype=torch.int32)
    flash_kwargs = dict(cu_seq_lens_q=cu_seq_lens, cu_seq_lens_k=cu_seq_lens, max_length_q=5, max_length_k=5)
    with torch.no_grad():
        model(torch.arange(1, 11)[None], position_ids=torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4, 0, 1]]), **flash_kwargs)
    assert received == [flash_kwargs] * model.config.num_hidden_layers


def test_unknown_keyword_arguments_are_passed_on_like_llamas():
    model = tiny_model()
    input_ids = torch.arange(1, 9)[None]
    with torch.no_grad():
        expected = model(input_ids).logits
        # what the Trainer adds, handed to the loss and attention functions as in Llama
        torch.testing.assert_close(model(input_ids, num_items_in_batch=torch.tensor(7)).logits, expected)


def test_init_std_is_1_over_24_and_norms_are_ones():
    model = SmolLM2ForCausalLM(SmolLM2Config.tiny(vocab_size=4096, hidden_size=256, intermediate_size=512))
    assert abs(model.model.embed_tokens.weight.std().item() - 1 / 24) < 1e-3
    assert abs(model.model.layers[0].mlp.down_proj.weight.std().item() - 1 / 24) < 2e-3
    assert all(torch.equal(norm.weight, torch.ones_like(norm.weight))
               for name, norm in model.named_modules() if name.endswith("norm"))


# ---------------------------------------------------------------------------------------------------- saving


def test_save_pretrained_writes_remote_code_one_embedding_and_no_runtime_setting(tmp_path):
    """A plain save_pretrained (no call of the app's) writes the code its auto_map names (the fresh-process side of
    the contract is tests/e2e/test_saved_folder.py), the tied embedding once, and not the runtime settings."""
    model = tiny_model(use_speed_ops=True, loss_chunk_size=16)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_smollm2.SmolLM2Config",
        "AutoModel": "modeling_smollm2.SmolLM2Model",
        "AutoModelForCausalLM": "modeling_smollm2.SmolLM2ForCausalLM",
    }
    for name in ("configuration_smollm2.py", "modeling_smollm2.py", "smollm2_ops.py"):
        assert (tmp_path / name).is_file(), name
    assert "use_speed_ops" not in config and "loss_chunk_size" not in config
    assert model.config.use_speed_ops is True and model.config.loss_chunk_size == 16  # still set at runtime
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert "model.embed_tokens.weight" in f.keys()
        assert "lm_head.weight" not in f.keys()  # tied: stored once


def test_a_checkpoint_of_the_earlier_app_with_its_runtime_settings_loads(tmp_path):
    """The app used to save use_speed_ops (true in checkpoints) and loss_chunk_size in config.json: such a folder
    still loads, the values act as the runtime settings they are, and saving it again drops them."""
    tiny_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "use_speed_ops": True, "loss_chunk_size": 512}))
    loaded = SmolLM2ForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.use_speed_ops is True and loaded.config.loss_chunk_size == 512
    input_ids = torch.arange(1, 20)[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, tiny_model()(input_ids).logits, atol=1e-5, rtol=0)
    loaded.save_pretrained(tmp_path / "again")
    assert not {"use_speed_ops", "loss_chunk_size"} & set(json.loads((tmp_path / "again" / "config.json").read_text()))


# --------------------------------------------------------------------------------- speed ops (smollm2_ops.py)


@pytest.mark.parametrize("speed_op", [True, False])
@pytest.mark.parametrize("num_items_in_batch", [None, 11])
@pytest.mark.parametrize("loss_chunk_size", [7, 4096])
def test_chunked_loss_matches_the_full_logits_loss(num_items_in_batch, loss_chunk_size, speed_op):
    """The CPU speed op (an autograd.Function) and the plain ops that run everywhere (chunked_loss)."""
    # full vocabulary, narrow hidden, 2 x 10 tokens: chunks of 7 leave a remainder of 6
    model = tiny_model(vocab_size=49152, hidden_size=32, intermediate_size=64)
    weight = model.lm_head.weight
    generator = torch.Generator().manual_seed(5)
    hidden_states = torch.randn(2, 10, 32, generator=generator, requires_grad=True)
    labels = torch.randint(0, 49152, (2, 10), generator=generator)
    labels[0, :3] = -100
    labels[1, 7] = -100

    def chunked_loss():
        return causal_lm_loss(hidden_states, weight, labels, loss_chunk_size, num_items_in_batch, speed_op=speed_op)

    chunked = chunked_loss()
    chunked_grads = torch.autograd.grad(chunked, (hidden_states, weight))

    logits = F.linear(hidden_states, weight).float()
    shift_logits, shift_labels = logits[:, :-1].reshape(-1, 49152), labels[:, 1:].reshape(-1)
    if num_items_in_batch is None:
        plain = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
    else:
        plain = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum") / num_items_in_batch
    plain_grads = torch.autograd.grad(plain, (hidden_states, weight))

    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=0)
    for ours, reference in zip(chunked_grads, plain_grads):
        torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.norm(), reference.norm(), atol=0, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(chunked_loss(), plain)


@pytest.mark.parametrize("chunked", [{"use_speed_ops": True}, {"chunked_loss": True}], ids=["speed_op", "plain_ops"])
def test_bf16_autocast_loss_and_gradients_follow_fp32(chunked):
    """The Trainer's bf16=True: fp32 weights, bf16 matmuls; 40 tokens in chunks of 16 sum gradients across chunks."""
    model = tiny_model(vocab_size=2048, loss_chunk_size=16, **chunked).train()
    input_ids = torch.randint(0, 2048, (2, 20), generator=torch.Generator().manual_seed(6))
    parameters = list(model.parameters())
    fp32_loss = model(input_ids, labels=input_ids).loss
    fp32_grads = torch.autograd.grad(fp32_loss, parameters)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_loss = model(input_ids, labels=input_ids).loss
    bf16_grads = torch.autograd.grad(bf16_loss, parameters)

    assert bf16_loss.dtype == torch.float32
    torch.testing.assert_close(bf16_loss, fp32_loss, atol=0.05, rtol=0)
    for bf16, fp32 in zip(bf16_grads, fp32_grads):
        assert bf16.dtype == torch.float32
        assert F.cosine_similarity(bf16.flatten(), fp32.flatten(), dim=0) > 0.99
        torch.testing.assert_close(bf16.norm(), fp32.norm(), atol=0, rtol=0.05)  # the direction and the scale


@pytest.mark.parametrize("precision", ["fp32", "bf16 autocast"])
def test_chunked_loss_in_plain_ops_matches_the_plain_loss_and_returns_no_logits(precision):
    """chunked_loss (what runs on GPUs and under compile) against the same weights' full-logits loss, in the same
    precision: the loss, and every parameter's gradient elementwise and by norm."""
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16 autocast")
    input_ids = torch.randint(0, 2048, (2, 20), generator=torch.Generator().manual_seed(6))
    results = []
    for model in (tiny_model(vocab_size=2048).train(), tiny_model(vocab_size=2048, loss_chunk_size=16,
                                                                  chunked_loss=True).train()):
        with autocast:
            outputs = model(input_ids, labels=input_ids)
        results.append((outputs, torch.autograd.grad(outputs.loss, list(model.parameters()))))
    (plain, plain_grads), (chunked, chunked_grads) = results
    assert plain.logits is not None and chunked.logits is None  # nothing of (batch, seq, vocab) size is returned
    tolerance = {"fp32": 1e-5, "bf16 autocast": 2e-2}[precision]
    torch.testing.assert_close(chunked.loss, plain.loss, atol=tolerance / 10, rtol=0)
    for got, expected in zip(chunked_grads, plain_grads):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected, atol=tolerance * expected.abs().max().item(), rtol=0)
        torch.testing.assert_close(got.norm(), expected.norm(), atol=0, rtol=tolerance)


def graph_targets(fn, *args, **kwargs):
    """What torch.compile(fullgraph=True) traces `fn` into, as the names of the graph's call targets, and the
    compiled result (run through aot_eager: the graph, differentiated, without a C++ build)."""
    targets = []

    def backend(graph_module, example_inputs):
        targets.extend(str(node.target) for node in graph_module.graph.nodes if node.op == "call_function")
        return torch._dynamo.lookup_backend("aot_eager")(graph_module, example_inputs)

    torch._dynamo.reset()
    return targets, torch.compile(fn, backend=backend, fullgraph=True)(*args, **kwargs)


def test_chunked_loss_compiles_to_plain_ops_with_the_eager_values_and_gradients():
    """Under torch.compile the loss is one graph of plain ops (no autograd.Function: the compiler sees and fuses
    everything), with the eager loss and gradients, in bf16 autocast as the Trainer runs it."""
    model = tiny_model(vocab_size=2048, loss_chunk_size=16, chunked_loss=True, use_speed_ops=True).train()
    input_ids = torch.randint(0, 2048, (2, 20), generator=torch.Generator().manual_seed(6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = model(input_ids, labels=input_ids).loss  # here the speed ops run, the hand-written loss among them
        eager_grads = torch.autograd.grad(eager, list(model.parameters()))
        targets, compiled = graph_targets(model, input_ids, labels=input_ids)
    compiled_grads = torch.autograd.grad(compiled.loss, list(model.parameters()))
    assert compiled.logits is None and not [target for target in targets if "autograd_function" in target]
    torch.testing.assert_close(compiled.loss, eager, atol=1e-3, rtol=0)
    for got, expected in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got.norm(), expected.norm(), atol=0, rtol=1e-2)
        assert F.cosine_similarity(got.flatten(), expected.flatten(), dim=0) > 0.999
    # the check above can fail: an autograd.Function, traced, shows as such in the graph
    hidden_states, labels = torch.randn(20, 64, requires_grad=True), input_ids[0]
    targets, _ = graph_targets(smollm2_ops.SmolLM2LinearCrossEntropy.apply, hidden_states, model.lm_head.weight,
                               labels, 16, True)
    assert [target for target in targets if "autograd_function" in target]


def test_each_speed_op_matches_the_plain_path_in_values_and_gradients():
    """The model with use_speed_ops against the same weights without, one op's module at a time, then all at once:
    outputs and every parameter's gradient, compared elementwise and by norm (a cosine alone misses a scale)."""
    input_ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(16))

    def loss_and_grads(model, module):
        model.train()
        if module == "loss":
            loss = model(input_ids, labels=input_ids).loss
        else:
            loss = model(input_ids).logits.float().square().mean()  # the layers alone, plain lm_head
        return loss, torch.autograd.grad(loss, list(model.parameters()))

    plain = tiny_model(loss_chunk_size=16)
    fast = tiny_model(loss_chunk_size=16, use_speed_ops=True)
    for module in ("layers", "loss"):
        loss, grads = loss_and_grads(plain, module)
        fast_loss, fast_grads = loss_and_grads(fast, module)
        torch.testing.assert_close(fast_loss, loss, atol=1e-6, rtol=1e-6)
        for (name, _), got, expected in zip(plain.named_parameters(), fast_grads, grads):
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5, msg=name)
            torch.testing.assert_close(got.norm(), expected.norm(), atol=0, rtol=1e-5, msg=name)

    # each op alone, against its plain twin, with input gradients
    generator = torch.Generator().manual_seed(17)
    layer, fast_layer = plain.model.layers[0], fast.model.layers[0]
    hidden_states = torch.randn(2, 24, 64, generator=generator, requires_grad=True)
    cos, sin = plain.model.rotary_emb(hidden_states, torch.arange(24)[None])
    queries = torch.randn(2, 4, 24, 16, generator=generator, requires_grad=True)
    cases = {
        "rmsnorm": (layer.input_layernorm, fast_layer.input_layernorm, (hidden_states,)),
        "swiglu": (layer.mlp, fast_layer.mlp, (hidden_states,)),
        "rope": (lambda q: modeling_smollm2.apply_rotary_pos_emb(q, q, cos, sin)[0],
                 lambda q: smollm2_ops.apply_rotary_pos_emb(q, q, cos, sin)[0], (queries,)),
    }
    for name, (plain_op, fast_op, inputs) in cases.items():
        results = []
        for op in (plain_op, fast_op):
            output = op(*inputs)
            upstream = torch.randn(output.shape, generator=torch.Generator().manual_seed(18))
            results.append((output, torch.autograd.grad(output, inputs, upstream)))
        (expected, expected_grads), (got, got_grads) = results
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6, msg=name)
        for got_grad, expected_grad in zip(got_grads, expected_grads):
            torch.testing.assert_close(got_grad, expected_grad, atol=1e-5, rtol=1e-5, msg=name)
            torch.testing.assert_close(got_grad.norm(), expected_grad.norm(), atol=0, rtol=1e-5, msg=name)


class OpRecorder(TorchDispatchMode):
    """The aten ops a forward dispatches."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func))
        return func(*args, **(kwargs or {}))


# what only the speed ops dispatch: RMSNorm's in-place passes into one fresh buffer (the plain path's ops are functional)
SPEED_OP_SIGNATURE = {"aten.pow.Tensor_Scalar_out", "aten.mul.out"}


def test_speed_ops_are_off_by_default_and_without_grad():
    """Off unless asked for; asked for, they run in a training forward (with grad) and not in a no-grad one
    (decoding, evaluation without labels), where the plain ops have less per-call overhead. Observed in the ops the
    forward dispatches, not in its output (the same numbers either way)."""
    model = tiny_model(use_speed_ops=True)
    input_ids = torch.arange(1, 9)[None]
    assert SmolLM2Config().use_speed_ops is False and tiny_model().config.use_speed_ops is False

    def dispatched(model, grad):
        with torch.set_grad_enabled(grad), OpRecorder() as recorder:
            logits = model(input_ids).logits
        assert logits.shape == (1, 8, model.config.vocab_size)
        return recorder.ops

    assert SPEED_OP_SIGNATURE <= dispatched(model, grad=True)  # the signature is real: the ops do run with grad
    assert not SPEED_OP_SIGNATURE & dispatched(model, grad=False)
    assert not SPEED_OP_SIGNATURE & dispatched(tiny_model(), grad=True)  # off by default
    with torch.no_grad():
        assert model(input_ids, labels=input_ids).logits is None  # the chunked loss also serves evaluation


# ------------------------------------------------------------------------------------ hand-written backward


def test_rmsnorm_rotary_and_swiglu_functions_pass_gradcheck():
    """Finite differences in fp64 against the hand-written backward passes, with the model's shapes."""
    generator = torch.Generator().manual_seed(7)

    def rand(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=generator, requires_grad=True)

    hidden_states = rand(2, 3, 8)
    assert torch.autograd.gradcheck(SmolLM2RMSNormFunction.apply, (hidden_states, rand(8), 1e-5))
    assert torch.autograd.gradcheck(SmolLM2SwiGLUFunction.apply, (hidden_states, rand(6, 8), rand(6, 8), rand(8, 6)))
    # (batch, heads, seq, head_dim) rotated by (batch, 1, seq, head_dim) cos/sin, the same angles in both halves
    angles = torch.rand(2, 1, 3, 4, dtype=torch.float64, generator=generator).repeat(1, 1, 1, 2)
    sin = angles.sin()
    arguments = (rand(2, 5, 3, 8), angles.cos(), torch.cat((-sin[..., :4], sin[..., 4:]), dim=-1))
    assert torch.autograd.gradcheck(SmolLM2RotaryFunction.apply, arguments)


def saved_activation_bytes(layer, hidden_states, *args, **kwargs) -> int:
    """Bytes that autograd keeps for backward from one forward of `layer`, parameters (and views of them) excluded."""
    parameter_storages = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        layer(hidden_states, *args, **kwargs)
    return sum(saved.values())


def test_decoder_layer_keeps_less_for_backward_than_llamas():
    """Each norm keeps its input, not also its normalised copy; the MLP keeps gate and up, not also silu(gate) and
    the product: 2 x hidden + 2 x intermediate values per token fewer than Llama's layer."""
    model = tiny_model(attn_implementation="sdpa", use_speed_ops=True).train()
    llama = llama_twin(model, attn_implementation="sdpa").train()
    config = model.config
    batch, seq = 2, 16
    hidden_states = torch.randn(batch, seq, config.hidden_size, requires_grad=True)
    position_ids = torch.arange(seq)[None]
    ours_rope, llama_rope = (m.model.rotary_emb(hidden_states, position_ids) for m in (model, llama))

    ours = saved_activation_bytes(model.model.layers[0], hidden_states, position_embeddings=ours_rope)
    theirs = saved_activation_bytes(llama.model.layers[0], hidden_states, position_embeddings=llama_rope)
    fewer_values = batch * seq * (2 * config.hidden_size + 2 * config.intermediate_size)
    assert theirs - ours >= fewer_values * hidden_states.element_size()


class Doubled(torch.nn.Linear):
    """Stands in for a LoRA adapter or a quantised linear: an nn.Linear subclass with its own forward."""

    def forward(self, x):
        return 2 * super().forward(x)


def test_wrapped_mlp_projections_run_as_modules():
    model, reference = tiny_model(use_speed_ops=True), tiny_model()
    input_ids = torch.randint(0, model.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(8))
    for layer, reference_layer in zip(model.model.layers, reference.model.layers):
        doubled = Doubled(model.config.hidden_size, model.config.intermediate_size, bias=False)
        doubled.weight = layer.mlp.up_proj.weight
        layer.mlp.up_proj = doubled
        with torch.no_grad():
            reference_layer.mlp.up_proj.weight.mul_(2)
    # with grad enabled, where the MLP would otherwise take SmolLM2SwiGLUFunction
    torch.testing.assert_close(model(input_ids).logits, reference(input_ids).logits)


def test_swiglu_function_under_bf16_autocast_matches_the_module_path():
    """The Trainer's bf16=True on the hand-written MLP backward, against the same MLP run as modules (a no-op hook
    on each projection makes the MLP take that path)."""
    model = tiny_model(vocab_size=2048, use_speed_ops=True).train()
    module_path = copy.deepcopy(model)
    for layer in module_path.model.layers:
        for projection in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
            projection.register_forward_hook(lambda module, args, output: None)
    input_ids = torch.randint(0, 2048, (2, 20), generator=torch.Generator().manual_seed(9))
    results = []
    for candidate in (model, module_path):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = candidate(input_ids, labels=input_ids).loss
        results.append((loss, torch.autograd.grad(loss, list(candidate.parameters()))))
    (loss, grads), (module_loss, module_grads) = results

    torch.testing.assert_close(loss, module_loss, atol=1e-6, rtol=0)  # the forward matmuls are the same
    for got, expected in zip(grads, module_grads):
        assert got.dtype == torch.float32
        assert F.cosine_similarity(got.flatten(), expected.flatten(), dim=0) > 0.999
        torch.testing.assert_close(got.norm(), expected.norm(), atol=0, rtol=0.01)  # a scale error fails here


# ------------------------------------------------------------------------------------ gradient checkpointing


@pytest.mark.parametrize("use_speed_ops", [False, True])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(use_speed_ops):
    model = tiny_model(use_speed_ops=use_speed_ops).train()
    input_ids, attention_mask, position_ids, labels = left_padded_batch(model.config.vocab_size)
    kwargs = dict(attention_mask=attention_mask, position_ids=position_ids, labels=labels)

    plain_loss = model(input_ids, **kwargs).loss
    plain_grads = torch.autograd.grad(plain_loss, list(model.parameters()))
    model.activation_checkpointing_enable()  # what Trainer(gradient_checkpointing=True) calls
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    checkpointed_loss = model(input_ids, use_cache=True, **kwargs).loss  # the cache is dropped, not an error
    checkpointed_grads = torch.autograd.grad(checkpointed_loss, list(model.parameters()))

    torch.testing.assert_close(checkpointed_loss, plain_loss, atol=1e-6, rtol=0)
    for checkpointed, plain in zip(checkpointed_grads, plain_grads):
        torch.testing.assert_close(checkpointed, plain, atol=1e-6, rtol=1e-6)


def test_compiled_model_gives_the_same_loss_and_gradients():
    """torch.compile (as `--torch_compile`), with the aot_eager backend: the whole graph traced, no C++ build. The
    speed ops step aside under compile (an autograd.Function would break the graph): fullgraph=True checks it."""
    model = tiny_model(use_speed_ops=True).train()
    input_ids = torch.randint(0, model.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(3))
    plain_loss = model(input_ids, labels=input_ids).loss
    plain_grads = torch.autograd.grad(plain_loss, list(model.parameters()))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    compiled_loss = compiled(input_ids, labels=input_ids).loss
    compiled_grads = torch.autograd.grad(compiled_loss, list(model.parameters()))
    torch.testing.assert_close(compiled_loss, plain_loss, atol=1e-5, rtol=0)
    for got, expected in zip(compiled_grads, plain_grads):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------- SDPA and eager


def test_sdpa_matches_eager_without_and_with_padding():
    eager = tiny_model(attn_implementation="eager")
    sdpa = tiny_model(attn_implementation="sdpa")
    input_ids, attention_mask, position_ids, _ = left_padded_batch(eager.config.vocab_size)
    real = attention_mask.bool()
    with torch.no_grad():
        torch.testing.assert_close(sdpa(input_ids).logits, eager(input_ids).logits, atol=1e-5, rtol=0)
        ones = torch.ones_like(input_ids)  # packed training batches: no padding
        torch.testing.assert_close(
            sdpa(input_ids, attention_mask=ones).logits, eager(input_ids).logits, atol=1e-5, rtol=0
        )
        kwargs = dict(attention_mask=attention_mask, position_ids=position_ids)
        torch.testing.assert_close(
            sdpa(input_ids, **kwargs).logits[real], eager(input_ids, **kwargs).logits[real], atol=1e-5, rtol=0
        )


@dataclass
class SdpaCall:
    """What one F.scaled_dot_product_attention call got."""

    attn_mask: object  # None, or the mask (a tensor in eager mode, a graph node under compile)
    is_causal: bool
    enable_gqa: bool
    key_heads: int


class EagerSdpaCalls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.calls.append(SdpaCall(kwargs.get("attn_mask"), kwargs.get("is_causal", False),
                                       kwargs.get("enable_gqa", False), args[1].shape[1]))
        return func(*args, **kwargs)


def compiled_sdpa_calls(model, *args, **kwargs):
    """The SDPA calls in the graph torch.compile(fullgraph=True) traces for `model(*args, **kwargs)`, and its output
    (through aot_eager: the graph, differentiated, without a C++ build)."""
    calls = []

    def backend(graph_module, example_inputs):
        for node in graph_module.graph.nodes:
            if node.op == "call_function" and node.target is F.scaled_dot_product_attention:
                key = node.args[1].meta["example_value"]  # (batch, heads, seq, head_dim)
                calls.append(SdpaCall(node.kwargs.get("attn_mask"), node.kwargs.get("is_causal", False),
                                      node.kwargs.get("enable_gqa", False), key.shape[1]))
        return torch._dynamo.lookup_backend("aot_eager")(graph_module, example_inputs)

    torch._dynamo.reset()
    return calls, torch.compile(model, backend=backend, fullgraph=True)(*args, **kwargs)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_training_batch_reaches_sdpa_as_is_causal_with_the_kv_heads_unrepeated(compiled):
    """What the Trainer passes for an unpadded, unpacked batch (input_ids and labels; no attention_mask, position_ids
    or cache) reaches SDPA as attn_mask=None, is_causal=True, enable_gqa=True with the 2 key/value heads: what its
    flash kernel needs on CUDA. Under torch.compile too, where a mask built for possible packing would rule that kernel
    out; the loss and gradients are eager's. In eager mode the forward and backward read nothing back on the host."""
    model = tiny_model(attn_implementation="sdpa", use_cache=False).train()  # use_cache: the Trainer's False
    input_ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(3))
    parameters = list(model.parameters())
    eager_calls, syncs = EagerSdpaCalls(), host_syncs()
    with eager_calls, syncs:
        eager = model(input_ids, labels=input_ids).loss
        eager_grads = torch.autograd.grad(eager, parameters)
    assert syncs.count == 0
    calls = eager_calls.calls
    if compiled:
        calls, outputs = compiled_sdpa_calls(model, input_ids, labels=input_ids)
        torch.testing.assert_close(outputs.loss, eager, atol=1e-5, rtol=0)
        for got, expected in zip(torch.autograd.grad(outputs.loss, parameters), eager_grads):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert len(calls) == model.config.num_hidden_layers
    assert all(call == SdpaCall(None, True, True, model.config.num_key_value_heads) for call in calls), calls
