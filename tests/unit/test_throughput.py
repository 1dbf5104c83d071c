"""Throughput: FLOPs per token (PaLM's count) and the step meter's fields, with its clock driven by the test."""

import pytest

from configuration_smollm2 import SmolLM2Config
from modeling_smollm2 import SmolLM2ForCausalLM
from pretraining.run_state import Counters, LogWindow
from pretraining.throughput import StepMeter, flops_per_token


def test_flops_per_token_of_smollm2_135m_at_2048_is_the_hand_count():
    """6N + 12·L·H·Q·T = 6 x 134,515,008 + 12 x 30 x 9 x 64 x 2048 = 0.807 G + 0.425 G = 1.232 GFLOP/token."""
    import torch

    config = SmolLM2Config()
    with torch.device("meta"):
        num_parameters = SmolLM2ForCausalLM(config).num_parameters()
    assert num_parameters == 134_515_008
    assert flops_per_token(config, 2048, num_parameters) == 6 * 134_515_008 + 12 * 30 * 9 * 64 * 2048
    assert flops_per_token(config, 2048, num_parameters) / 1e9 == pytest.approx(1.232, abs=5e-4)


def meter(tokens_per_step=1000, world_size=1, peak_flops=None, warn=None) -> StepMeter:
    return StepMeter(tokens_per_step, world_size, 1e6, peak_flops, LogWindow(), Counters(), warn=warn)


def test_step_meter_times_steps_from_their_first_fetch_to_their_optimizer_step():
    """Two steps of 2 s, each with 0.5 s of fetching (the second in two micro-batch fetches); the time between the
    optimizer step and the next fetch (generation samples, evaluation, checkpoints) is not counted."""
    steps = meter(tokens_per_step=1000, world_size=2, peak_flops=1e9)
    steps.fetched(10.0, 10.5)
    steps.step_done(now=12.0)
    steps.fetched(20.0, 20.25)  # 8 s after the first step ended: step-end work, not counted
    steps.fetched(20.75, 21.0)  # a second micro-batch of the same step
    steps.step_done(now=22.0)
    fields = steps.pop_fields()
    assert fields["tokens_seen"] == 2000
    assert fields["step_time"] == pytest.approx(2.0) and fields["data_wait"] == pytest.approx(0.5)
    assert fields["tokens_per_second"] == pytest.approx(500.0)
    assert fields["tokens_per_second_per_device"] == pytest.approx(250.0)
    assert fields["mfu"] == pytest.approx(250.0 * 1e6 / 1e9)
    assert steps.pop_fields() == {"tokens_seen": 2000}  # a window with no step: no speed fields
    steps.step_done(now=30.0)  # an optimizer step with no fetch recorded: its tokens are seen, it is not timed
    assert steps.window.steps == 0 and steps.counters.tokens_seen == 3000


def test_a_window_across_a_batch_change_counts_each_steps_own_tokens():
    """A logging window resumed from a checkpoint of a run with 1000 tokens a step, then stepped at 3000: tokens/s
    and MFU are over the tokens each step really had, and the tokens seen go on from the checkpoint's."""
    before = meter(tokens_per_step=1000, peak_flops=1e12)
    before.fetched(0.0, 0.0)
    before.step_done(now=1.0)
    after = StepMeter(3000, 1, 1e6, 1e12, before.window, before.counters)  # the resumed run shares the run state
    after.fetched(5.0, 5.0)
    after.step_done(now=6.0)
    fields = after.pop_fields()
    assert fields["tokens_seen"] == 4000
    assert fields["tokens_per_second"] == pytest.approx(4000 / 2) and fields["mfu"] == pytest.approx(2000 * 1e6 / 1e12)


def test_no_mfu_without_a_peak_and_a_warning_above_it():
    unknown = meter(peak_flops=None)
    unknown.fetched(0.0, 0.1)
    unknown.step_done(now=1.0)
    assert "mfu" not in unknown.pop_fields()
    warnings = []
    too_low = meter(peak_flops=1e3, warn=lambda *args, **kwargs: warnings.append(args[0]))
    for step in (1, 2):
        too_low.fetched(step, step + 0.1)
        too_low.step_done(now=step + 1.0)
        assert "mfu" not in too_low.pop_fields()  # above the peak: not an MFU
    assert len(warnings) == 1 and "above the peak of 1e-09: MFU is not logged (check --peak_tflops)" in warnings[0]
