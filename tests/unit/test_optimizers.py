"""--optim muon (pretraining/optimizers.py): which parameters Muon holds, the one optimizer equal to torch's Muon and
AdamW side by side, its state dict, its settings and refusals.

    python -m pytest tests/unit/test_optimizers.py -q
"""

import copy
import io
import re

import pytest
import torch

from configuration_smollm2 import SmolLM2Config
from helpers import in_process_trainer
from modeling_smollm2 import SmolLM2ForCausalLM
from pretraining.arguments import PretrainingArguments
from pretraining.optimizers import MUON_DEFAULTS, MuonSettings, MuonWithAdamW, hidden_matrices, muon_settings

SETTINGS = {"lr": 3e-3, "betas": (0.9, 0.95), "eps": 1e-8}


def tiny_model(seed=0):
    torch.manual_seed(seed)
    config = SmolLM2Config(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=96)
    return SmolLM2ForCausalLM(config)


def trainer_groups(model, weight_decay=0.1):
    """The Trainer's two param groups: weight decay for all but the norms."""
    decay = [p for n, p in model.named_parameters() if "norm" not in n]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": [p for n, p in model.named_parameters() if "norm" in n], "weight_decay": 0.0}]


def muon_with_adamw(model):
    return MuonWithAdamW(trainer_groups(model), [p for _, p in hidden_matrices(model)], **SETTINGS)


def train(model, optimizer, steps, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        input_ids = torch.randint(0, 96, (2, 16), generator=generator)
        model(input_ids=input_ids, labels=input_ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def test_muon_holds_the_decoder_layers_matrices_and_adamw_the_rest():
    model = tiny_model()
    names = [name for name, _ in hidden_matrices(model)]
    projections = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                   "mlp.up_proj", "mlp.down_proj")
    assert names == [f"model.layers.{i}.{proj}.weight" for i in range(2) for proj in projections]
    optimizer = muon_with_adamw(model)
    held = lambda groups: {id(p) for group in groups for p in group["params"]}  # noqa: E731
    assert held(optimizer.muon.param_groups) == {id(p) for _, p in hidden_matrices(model)}
    assert held(optimizer.adamw.param_groups) == {id(p) for n, p in model.named_parameters() if n not in names}
    # one list of groups, Muon's first, each with its group's weight decay (none on the norms)
    assert optimizer.param_groups == optimizer.muon.param_groups + optimizer.adamw.param_groups
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.1, 0.1, 0.0]
    assert "momentum" in optimizer.param_groups[0] and "betas" in optimizer.param_groups[1]


def test_one_optimizer_trains_as_torch_muon_and_adamw_side_by_side():
    model = tiny_model()
    twin = copy.deepcopy(model)
    train(model, muon_with_adamw(model), steps=3)
    matrices = {id(p) for _, p in hidden_matrices(twin)}
    groups = trainer_groups(twin)
    muon = torch.optim.Muon([{**g, "params": [p for p in g["params"] if id(p) in matrices]} for g in groups[:1]],
                            lr=3e-3, **vars(MUON_DEFAULTS))
    adamw = torch.optim.AdamW([{**g, "params": [p for p in g["params"] if id(p) not in matrices]} for g in groups],
                              **SETTINGS)

    class Both:
        def step(self):
            muon.step()
            adamw.step()

        def zero_grad(self, set_to_none):
            twin.zero_grad(set_to_none=set_to_none)

    train(twin, Both(), steps=3)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), name


def test_the_state_dict_round_trip_resumes_exactly():
    """Saved (torch's format, weights-only) after 3 steps and loaded into a fresh optimizer over a copy of the model:
    the next 3 steps are the uninterrupted run's, and the two torch optimizers inside still share its state."""
    model = tiny_model()
    optimizer = muon_with_adamw(model)
    train(model, optimizer, steps=3)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    resumed_model = copy.deepcopy(model)
    resumed = muon_with_adamw(resumed_model)
    resumed.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert resumed.muon.state is resumed.state and resumed.adamw.param_groups == resumed.param_groups[1:]
    momentum = {n for n, p in resumed_model.named_parameters() if "momentum_buffer" in resumed.state[p]}
    assert momentum == {name for name, _ in hidden_matrices(resumed_model)}
    train(model, optimizer, steps=3, seed=2)
    train(resumed_model, resumed, steps=3, seed=2)
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)


def test_parameters_without_a_gradient_are_left_alone():
    """The non-finite guard skips a step by dropping the gradients: no weight, momentum or moment may change."""
    model = tiny_model()
    optimizer = muon_with_adamw(model)
    train(model, optimizer, steps=2)
    before = copy.deepcopy(optimizer.state_dict())
    weights = [p.detach().clone() for p in model.parameters()]
    optimizer.step()  # no gradients
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters()))
    after = optimizer.state_dict()
    assert all(torch.equal(value, after["state"][index][key]) for index, state in before["state"].items()
               for key, value in state.items())


def test_settings_come_from_optim_args_over_the_defaults():
    assert muon_settings(None) == MUON_DEFAULTS == MuonSettings(0.95, True, 5, "match_rms_adamw")
    assert muon_settings("momentum=0.9, nesterov=False,ns_steps=6") == MuonSettings(0.9, False, 6, "match_rms_adamw")
    for text, problem in [("betas=0.9", "--optim muon has no setting 'betas' (choose from momentum, nesterov"),
                          ("momentum", "optim_args must be comma-separated key=value pairs, got 'momentum'"),
                          ("nesterov=yes", "optim_args: nesterov must be bool, got 'yes'"),
                          ("ns_steps=2.5", "optim_args: ns_steps must be int, got '2.5'"),
                          ("adjust_lr_fn=none", "adjust_lr_fn must be match_rms_adamw or original, got 'none'"),
                          ("momentum=1.5", "momentum must be in [0, 1)")]:
        with pytest.raises(ValueError, match=re.escape(problem)):
            muon_settings(text)


@pytest.mark.parametrize("extra, environment", [({"fsdp": "full_shard auto_wrap"}, {}),
                                                ({}, {"ACCELERATE_USE_FSDP": "true"})])
def test_fsdp_is_refused_in_one_line(tmp_path, monkeypatch, extra, environment):
    """Under FSDP a rank holds a shard of each matrix: orthogonalizing it is not Muon. Refused whether FSDP comes from
    the flag or from an accelerate config (its environment)."""
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=r"--optim muon does not run under FSDP: Muon orthogonalizes each whole"):
        PretrainingArguments(output_dir=str(tmp_path), optim="muon", use_cpu=True, **extra)


def test_the_app_gives_the_trainer_muon_for_the_matrices(tmp_path, corpus):
    """`--optim muon` as run_pretrain builds the trainer: its optimizer is MuonWithAdamW over the Trainer's param
    groups (no weight decay on the norms), with the settings of --optim_args; the args still say muon."""
    trainer = in_process_trainer(str(tmp_path / "run"), corpus, [], optim="muon", optim_args="momentum=0.9",
                                 weight_decay=0.05)
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, MuonWithAdamW) and trainer.args.optim == "muon"
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    for group in optimizer.param_groups:
        decayed = {"norm" not in names[id(p)] for p in group["params"]}
        assert decayed == {group["weight_decay"] == 0.05}
    assert optimizer.muon.param_groups[0]["momentum"] == 0.9
    assert len(optimizer.muon.param_groups[0]["params"]) == 7 * trainer.model.config.num_hidden_layers


def test_the_newton_schulz_flops_count_is_torchs_own():
    """benchmarks/bench_optimizer.py's count of Muon's extra FLOPs per step, against torch's FLOP counter over one step
    of torch's Muon on every matrix of a model whose key-value heads are fewer than its heads."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.bench_optimizer import newton_schulz_flops

    model = tiny_model()
    matrices = [p for _, p in hidden_matrices(model)]
    for matrix in matrices:
        matrix.grad = torch.randn_like(matrix)
    optimizer = torch.optim.Muon(matrices, ns_steps=5)
    with FlopCounterMode(display=False) as counter:
        optimizer.step()
    assert newton_schulz_flops(model.config) == counter.get_total_flops() > 0
