"""flex_attention, the attention backend that torch compiles a kernel for (slow on CPU, hence e2e)."""

import torch
from transformers.utils import is_torch_flex_attn_available

from configuration_smollm2 import SmolLM2Config
from modeling_smollm2 import SmolLM2ForCausalLM


def test_flex_attention_compiles_and_matches_eager():
    """flex_attention runs on CPU (torch compiles its kernel, about 40 s on 2 cores): accepted wherever torch has
    it, with eager attention's logits."""
    assert is_torch_flex_attn_available()  # torch >= 2.5 (requirements.txt asks for 2.6)
    config = SmolLM2Config.tiny()
    model = SmolLM2ForCausalLM._from_config(config, attn_implementation="flex_attention")
    assert model.config._attn_implementation == "flex_attention"
    torch.manual_seed(0)
    eager = SmolLM2ForCausalLM(SmolLM2Config.tiny()).eval()
    model.load_state_dict(eager.state_dict())
    model.eval()
    input_ids = torch.arange(1, 17)[None]
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids).logits, eager(input_ids).logits, atol=1e-4, rtol=0)
