"""pretraining/run_state.py: what a run carries across a restart, as one record: each `--allow_changes` value as a
transition on it, the counters it rebases, a checkpoint's round trip, and what a resume refuses."""

import copy

import pytest
import torch

from pretraining.errors import ArgumentError
from pretraining.run_files import run_state_file
from pretraining.run_state import BatchLayout, LogWindow, RunState, read_record

IDENTITY = {
    "model": {"hidden_size": 64, "num_hidden_layers": 2},
    "tokenizer": {"name": "bundled", "tokens": 49152},
    "data": {"train_file": "a.jsonl", "block_size": 128, "seed": 42},
    "schedule": {"learning_rate": 0.003, "max_grad_norm": 1.0},
    "batch": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "world_size": 1},
}


def changed(**parts) -> dict:
    """IDENTITY with the given settings changed: changed(batch={"gradient_accumulation_steps": 3})."""
    identity = copy.deepcopy(IDENTITY)
    for part, values in parts.items():
        identity[part].update(values)
    return identity


def trained(steps: int, tokens_per_step: int, batches_per_step: int = 2) -> RunState:
    """A new run's state after `steps` steps of `tokens_per_step`, as a checkpoint at `steps` holds it."""
    state = RunState.start(IDENTITY, streams=2, batches_per_step=batches_per_step)
    state.counters.tokens_seen = steps * tokens_per_step
    state.counters.source_tokens = {"a.jsonl": steps * tokens_per_step}
    state.data = {0: {"batches": steps * batches_per_step // 2}, 1: {"batches": steps * batches_per_step // 2}}
    state.checkpoint = f"checkpoint-{steps}"
    return state


def test_a_new_run_starts_its_loader_batches_at_step_0():
    state = RunState.start(IDENTITY, streams=2, batches_per_step=4)
    assert state.record.data_streams == 2 and state.counters.tokens_seen == 0 and state.data is None
    assert [state.batch_of_step(step) for step in (0, 1, 5)] == [0, 4, 20]


def test_a_batch_change_is_a_new_layout_from_the_resumed_step_and_the_counters_go_on():
    """10 steps at 2 loader batches a step, then 3: later steps' batches follow the new layout, earlier ones keep
    theirs (a data stage at step 5 or 12 stays at that step); the tokens seen and the data position are kept."""
    state = trained(10, tokens_per_step=512)
    parts = state.resume(changed(batch={"gradient_accumulation_steps": 3}), {"batch"}, 10, batches_per_step=3)
    assert parts == ["batch"]
    assert state.counters.layouts == [BatchLayout(0, 0, 2), BatchLayout(10, 20, 3)]
    assert [state.batch_of_step(step) for step in (5, 10, 12, 16)] == [10, 20, 26, 38]
    assert state.counters.tokens_seen == 5120 and state.data is not None
    assert [segment.from_step for segment in state.record.segments] == [0, 10]
    assert state.record.segments[-1].changed == ["batch"] and state.record.identity["batch"][
        "gradient_accumulation_steps"] == 3
    # a second change later on: a third layout, from where the second one had got to
    state.resume(changed(batch={"gradient_accumulation_steps": 1}), {"batch"}, 16, batches_per_step=1)
    assert state.counters.layouts[-1] == BatchLayout(16, 38, 1) and state.batch_of_step(18) == 40


def test_a_data_change_starts_the_data_afresh_and_keeps_the_tokens_per_source():
    state = trained(10, tokens_per_step=512)
    parts = state.resume(changed(data={"train_file": "b.jsonl"}), {"data"}, 10, batches_per_step=2)
    assert parts == ["data"] and state.data is None
    # the new data's loader batches count from the resumed step; a stage that began before it is already running
    assert state.counters.layouts == [BatchLayout(10, 0, 2)]
    assert state.batch_of_step(10) == 0 and state.batch_of_step(12) == 4 and state.batch_of_step(0) < 0
    # the tokens of the old data stay under its source's name; the new data's add up beside (and onto the same name)
    assert state.source_tokens([100], ["b.jsonl"]) == {"a.jsonl": 5120, "b.jsonl": 100}
    assert state.source_tokens([100], ["a.jsonl"]) == {"a.jsonl": 5220}
    assert state.counters.tokens_seen == 5120


def test_a_schedule_change_rebases_nothing():
    state = trained(10, tokens_per_step=512)
    before = copy.deepcopy(state.counters), copy.deepcopy(state.data)
    assert state.resume(changed(schedule={"learning_rate": 1e-4}), {"schedule"}, 10, batches_per_step=2) == [
        "schedule"]
    assert (state.counters, state.data) == before and len(state.record.segments) == 2


def test_an_unchanged_resume_adds_no_segment():
    state = trained(10, tokens_per_step=512)
    assert state.resume(copy.deepcopy(IDENTITY), set(), 10, batches_per_step=2) == []
    assert len(state.record.segments) == 1 and state.counters.layouts == [BatchLayout(0, 0, 2)]


@pytest.mark.parametrize("identity, allowed, expected", [
    (changed(batch={"gradient_accumulation_steps": 3}), set(),
     r"with other settings than its run's \(batch: gradient_accumulation_steps: 2 -> 3\): run the same command, or "
     r"pass --allow_changes batch to take them from step 10 on"),
    (changed(batch={"world_size": 2}), {"batch"}, r"with another number of processes \(world_size: 1 -> 2\)"),
    (changed(model={"hidden_size": 96}), {"data", "schedule", "batch"},
     r"this command has another model or tokenizer \(hidden_size: 64 -> 96\)"),
])
def test_what_a_resume_refuses(identity, allowed, expected):
    state = trained(10, tokens_per_step=512)
    with pytest.raises(ArgumentError, match=rf"cannot resume from checkpoint-10.*{expected}"):
        state.resume(identity, allowed, 10, batches_per_step=3)
    assert len(state.record.segments) == 1 and len(state.counters.layouts) == 1  # refused: nothing changed


def test_a_checkpoint_holds_the_state_and_gives_it_back(tmp_path):
    """Saved by rank 1 (not the main process: no identity record from it) and by rank 0, loaded back: the same record,
    counters, window and data streams; the window is the one given (with the Trainer's running loss)."""
    state = trained(10, tokens_per_step=512)
    state.resume(changed(batch={"gradient_accumulation_steps": 3}), {"batch"}, 10, batches_per_step=3)
    streams = {0: {"batches": 11, "leftover": torch.arange(5)}, 1: {"batches": 10, "leftover": torch.arange(2)}}
    window = LogWindow(loss_sum=12.5, last_logged_step=10, skipped=1, steps=3, seconds=1.5, tokens=1536, flops=1e9)
    state.save(str(tmp_path), 1, False, streams, window, [600], ["a.jsonl"])
    assert read_record(str(tmp_path)) is None and (tmp_path / run_state_file(1)).is_file()
    state.save(str(tmp_path), 0, True, streams, window, [600], ["a.jsonl"])
    loaded = RunState.load(str(tmp_path), 0)
    assert loaded.record == state.record and loaded.counters == state.counters and loaded.window == window
    assert loaded.counters.source_tokens == {"a.jsonl": 600} and loaded.checkpoint == str(tmp_path)
    assert sorted(loaded.data) == [0, 1] and torch.equal(loaded.data[0]["leftover"], torch.arange(5))
    assert loaded.data[1]["batches"] == 10


def test_a_checkpoint_of_an_earlier_version_is_refused_in_one_line(tmp_path):
    state = trained(10, tokens_per_step=512)
    state.write_record(str(tmp_path))
    torch.save({"streams": {}}, tmp_path / "data_state_rank0.pt")  # the earlier layout: no run state file
    with pytest.raises(ArgumentError, match=r"cannot resume from .*: it has no run_state_rank0\.pt \(an earlier "
                                            r"version of this app wrote it\): resume it with that version, or start "
                                            r"anew with --replace_output_dir"):
        RunState.load(str(tmp_path), 0)
