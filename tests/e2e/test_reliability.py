"""Crash safety with real runs: SIGKILL and exact resume, SIGTERM, a later pass over the data, a corrupt newest
checkpoint, non-finite steps (in process, with a callback that poisons the weights), checkpoint rotation."""

import itertools
import json
import os
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import run_pretrain
from helpers import (in_process_trainer, killed_after, losses, read_log, run_here, start_app, tiny_args,
                     wait_for_step, with_flag, write_jsonl)
from pretraining.checkpoints import checkpoint_problem
from pretraining.errors import NonFiniteLossError


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, corpus):
    """An uninterrupted 16-step run (checkpoints every 4 steps) to compare resumed runs against: (output_dir, argv)."""
    output_dir = str(tmp_path_factory.mktemp("baseline"))
    argv = tiny_args(output_dir, *corpus, max_steps=16, save_steps=4, eval_steps=8, generation_steps=8)
    assert run_pretrain.main(argv) == 0
    return output_dir, argv


@pytest.fixture(scope="module")
def two_worker_baseline(tmp_path_factory, corpus):
    """The shuffled stream of the corpus in four files, read by two DataLoader workers (two shards each, their shuffle
    buffers in every checkpoint), 12 steps uninterrupted: (output_dir, argv)."""
    folder = tmp_path_factory.mktemp("four_parts")
    with open(corpus[0], encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    for k in range(4):
        write_jsonl(folder / f"part{k}.jsonl", texts[k::4])
    output_dir = str(folder / "baseline")
    argv = tiny_args(output_dir, str(folder / "part*.jsonl"), corpus[1], max_steps=12, save_steps=4,
                     dataloader_num_workers=2, shuffle_buffer=500)
    assert run_pretrain.main(argv) == 0
    return output_dir, argv


def killed_and_restarted(baseline_argv, output_dir, step):
    """The baseline's command on `output_dir` in a fresh process, killed with SIGKILL once it has logged `step`, then
    the same command again (in this process)."""
    argv = with_flag(baseline_argv, "output_dir", output_dir)
    process = start_app(argv)
    wait_for_step(output_dir, step, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return run_here(argv)


def test_sigkill_then_restart_resumes_exactly(tmp_path, baseline):
    baseline_dir, argv = baseline
    output_dir = str(tmp_path / "run")
    result = killed_and_restarted(argv, output_dir, 7)  # past checkpoint-4, before 8
    assert result.returncode == 0, result.stderr
    assert "Resuming from checkpoint-" in result.stdout
    assert [row["step"] for row in read_log(output_dir, "train")] == list(range(1, 17))  # each step once
    assert losses(output_dir) == pytest.approx(losses(baseline_dir), abs=1e-4)


def test_sigkill_with_two_dataloader_workers_resumes_exactly(tmp_path, two_worker_baseline):
    """Killed past a checkpoint, the restart trains on what the uninterrupted run did."""
    baseline_dir, argv = two_worker_baseline
    output_dir = str(tmp_path / "run")
    result = killed_and_restarted(argv, output_dir, 6)  # past checkpoint-4
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Resuming from checkpoint-" in result.stdout
    assert [row["step"] for row in read_log(output_dir, "train")] == list(range(1, 13))
    assert losses(output_dir) == pytest.approx(losses(baseline_dir), abs=1e-4)


def test_the_worker_count_may_change_on_resume(tmp_path, two_worker_baseline):
    """Killed (after checkpoint-4) in a run with two DataLoader workers, resumed with none: the two data streams the run
    started with go on in the main process, and the losses are the uninterrupted run's."""
    baseline_dir, argv = two_worker_baseline
    output_dir = str(tmp_path / "run")
    killed_after(baseline_dir, output_dir, 4)
    result = run_here(with_flag(with_flag(argv, "output_dir", output_dir), "dataloader_num_workers", 0))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Resuming from checkpoint-4" in result.stdout
    assert losses(output_dir) == pytest.approx(losses(baseline_dir), abs=1e-4)


def test_the_first_row_after_a_resume_is_the_uninterrupted_runs(tmp_path, corpus):
    """Rows every 3 steps, a checkpoint at 4: the row at 6 averages steps 4-6 whether or not the run stopped after
    checkpoint-4 (the checkpoint holds the loss and timings since the last row)."""
    baseline = str(tmp_path / "baseline")
    argv = tiny_args(baseline, *corpus, max_steps=6, save_steps=4, logging_steps=3)
    assert run_pretrain.main(argv) == 0
    output_dir = str(tmp_path / "run")
    killed_after(baseline, output_dir, 4)
    result = run_here(with_flag(argv, "output_dir", output_dir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [row["step"] for row in read_log(output_dir, "train")] == [3, 6]
    assert losses(output_dir)[6] == pytest.approx(losses(baseline)[6], abs=1e-5)


def test_a_run_shorter_than_its_logging_window_completes(tmp_path, corpus):
    output_dir = str(tmp_path / "run")
    result = run_here(tiny_args(output_dir, *corpus, max_steps=3, logging_steps=10))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [row["step"] for row in read_log(output_dir, "train")] == [3]  # the last step is always logged
    assert os.path.isfile(os.path.join(output_dir, "trainer_state.json"))
    with open(os.path.join(output_dir, "README.md"), encoding="utf-8") as f:
        assert "Trained for 3 optimizer steps" in f.read()


def test_a_bad_record_met_mid_run_is_one_line_and_the_checkpoints_intact(tmp_path, corpus):
    """A null text past the records checked at start-up: training stops when it reaches it, naming the file and the
    line, with exit 2, after checkpoints that stay complete."""
    lines = [json.dumps({"text": f"short document number {i}"}) for i in range(1200)]
    lines[1100] = json.dumps({"text": None})
    path = tmp_path / "late.jsonl"
    path.write_text("\n".join(lines) + "\n")
    output_dir = str(tmp_path / "run")
    result = run_here(tiny_args(output_dir, str(path), corpus[1], max_steps=200, save_steps=10, shuffle_buffer=0))
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "late.jsonl line 1101: the text column 'text' holds null, not a string" in result.stderr
    checkpoints = [name for name in os.listdir(output_dir) if name.startswith("checkpoint-")]
    assert checkpoints and all(checkpoint_problem(os.path.join(output_dir, name)) is None for name in checkpoints)


def test_sigterm_saves_at_the_current_step_and_exits_cleanly(tmp_path, corpus):
    output_dir = str(tmp_path / "run")
    argv = tiny_args(output_dir, *corpus, max_steps=500)
    process = start_app(argv)
    wait_for_step(output_dir, 3, process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    last = read_log(output_dir, "train")[-1]["step"]
    checkpoint = os.path.join(output_dir, f"checkpoint-{last}")
    assert checkpoint_problem(checkpoint) is None
    assert f"Stopped by SIGTERM at step {last}" in output
    assert not os.path.exists(os.path.join(output_dir, "model.safetensors"))  # no final model: not finished
    result = run_here(with_flag(argv, "max_steps", last + 2))
    assert result.returncode == 0, result.stderr
    assert f"Resuming from checkpoint-{last}" in result.stdout
    assert [row["step"] for row in read_log(output_dir, "train")] == list(range(1, last + 3))


def test_a_run_killed_in_a_later_pass_over_the_data_resumes_exactly(tmp_path, corpus):
    """Four documents, about 5 steps a pass: the run reads them 5 times. A restart from checkpoint-16 (a kill after
    it, as the later files are removed) continues in that pass, at that position, with the same losses."""
    with open(corpus[0], encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in itertools.islice(f, 16)]
    small = write_jsonl(tmp_path / "small.jsonl", [" ".join(texts[k::4]) for k in range(4)])
    baseline = str(tmp_path / "baseline")
    argv = tiny_args(baseline, small, corpus[1], max_steps=24, save_steps=8)
    assert run_pretrain.main(argv) == 0
    passes = {row["step"]: row["data_pass"] for row in read_log(baseline, "train")}
    assert passes[1] == 1 and passes[16] >= 3 and passes[24] > passes[16]

    output_dir = str(tmp_path / "run")
    killed_after(baseline, output_dir, 16)
    result = run_here(with_flag(argv, "output_dir", output_dir))
    assert result.returncode == 0, result.stderr
    assert "Resuming from checkpoint-16" in result.stdout
    assert [row["step"] for row in read_log(output_dir, "train")] == list(range(1, 25))  # each step once
    assert losses(output_dir) == pytest.approx(losses(baseline), abs=1e-4)
    assert {row["step"]: row["data_pass"] for row in read_log(output_dir, "train")} == passes


@pytest.mark.parametrize("damage", ["truncate_weights", "garble_state", "no_manifest"])
def test_corrupt_newest_checkpoint_is_skipped(tmp_path, baseline, damage):
    """Killed after checkpoint-12, whose files were then damaged: the restart names it, skips it, resumes from
    checkpoint-8 and trains what the uninterrupted run did."""
    baseline_dir, argv = baseline
    output_dir = str(tmp_path / "run")
    killed_after(baseline_dir, output_dir, 12)
    newest = os.path.join(output_dir, "checkpoint-12")
    if damage == "truncate_weights":
        path = os.path.join(newest, "model.safetensors")
        os.truncate(path, os.path.getsize(path) // 2)
    elif damage == "garble_state":
        path = os.path.join(newest, "trainer_state.json")
        size = os.path.getsize(path)
        with open(path, "w") as f:
            f.write("x" * size)
    else:
        os.remove(os.path.join(newest, "checkpoint_manifest.json"))
    result = run_here(with_flag(argv, "output_dir", output_dir))
    assert result.returncode == 0, result.stderr
    assert "skipping checkpoint-12" in result.stdout and "Resuming from checkpoint-8" in result.stdout
    assert [row["step"] for row in read_log(output_dir, "train")] == list(range(1, 17))
    assert losses(output_dir) == pytest.approx(losses(baseline_dir), abs=1e-4)


class PoisonWeights(TrainerCallback):
    """Makes the steps in `steps` produce NaN gradients (a stand-in for a bad batch or a hardware fault),
    restoring the weights after each when `transient`."""

    def __init__(self, steps, transient):
        self.steps, self.transient, self.saved = steps, transient, None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 in self.steps:
            weight = model.model.norm.weight
            self.saved = weight.detach().clone()
            weight.data[0] = float("nan")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.transient and self.saved is not None:
            model.model.norm.weight.data.copy_(self.saved)
            self.saved = None


class Snapshot(TrainerCallback):
    """The weights at the start of every step, keyed by the steps done before it."""

    def __init__(self):
        self.weights = {}

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.weights[state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("max_grad_norm, muon", [(1.0, False), (0.0, False), (1.0, True)])
def test_a_non_finite_step_is_skipped_and_training_goes_on(tmp_path, corpus, capsys, max_grad_norm, muon):
    """With and without clipping; and with Muon, under bf16 autocast (fp32 weights)."""
    snapshot = Snapshot()  # before the poison, so that it sees clean weights
    optimizer = {"optim": "muon", "bf16": True} if muon else {}
    trainer = in_process_trainer(str(tmp_path / "run"), corpus, [snapshot, PoisonWeights({4}, transient=True)],
                                 max_steps=8, save_steps=3, generation_steps=0, eval_steps=100,
                                 max_grad_norm=max_grad_norm, **optimizer)
    trainer.train()
    before = snapshot.weights
    rows = {row["step"]: row for row in read_log(str(tmp_path / "run"), "train")}
    assert sorted(rows) == list(range(1, 9)) and rows[4]["skipped_steps"] == 1 and rows[4]["grad_norm"] is None
    assert rows[4]["loss"] is None and all(rows[step]["loss"] > 0 for step in (3, 5))  # null, never a number
    assert "step 4: non-finite" in capsys.readouterr().out
    # step 4 changed nothing (weights and hence step 5's start equal step 4's start); step 5 trained again
    assert all(torch.equal(before[3][n], before[4][n]) for n in before[3])
    assert not all(torch.equal(before[4][n], before[5][n]) for n in before[4])
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_persistent_non_finite_steps_stop_the_run_and_keep_the_checkpoint(tmp_path, corpus):
    output_dir = str(tmp_path / "run")
    trainer = in_process_trainer(output_dir, corpus, [PoisonWeights(set(range(4, 100)), transient=False)],
                                 max_steps=20, save_steps=3, generation_steps=0, eval_steps=100, max_nonfinite_steps=3)
    with pytest.raises(NonFiniteLossError, match="3 non-finite steps in a row"):
        trainer.train()
    checkpoint = os.path.join(output_dir, "checkpoint-3")
    assert checkpoint_problem(checkpoint) is None
    assert all(torch.isfinite(t).all() for t in load_file(os.path.join(checkpoint, "model.safetensors")).values())
    assert not os.path.exists(os.path.join(output_dir, "checkpoint-6"))


def test_divergence_without_clipping_stops_with_the_checkpoint_intact(tmp_path, corpus):
    """--max_grad_norm 0 and a learning rate that blows up: the non-finite steps are skipped and logged as null,
    then the run stops with a one-line error; the checkpoints hold finite weights and no final model is saved."""
    output_dir = str(tmp_path / "run")
    result = run_here(tiny_args(output_dir, *corpus, max_steps=60, save_steps=2, max_grad_norm=0, learning_rate=1e4,
                                warmup_steps=0, max_nonfinite_steps=3))
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr
    assert result.stderr.startswith("error: 3 non-finite steps in a row") and result.stderr.count("\n") == 1
    assert "update skipped (3 in a row)" in result.stdout
    rows = read_log(output_dir, "train")
    # the third skipped step stops the run before it is logged
    assert all(row.get("skipped_steps") == 1 and row["grad_norm"] is None for row in rows[-2:])
    assert f"(up to step {rows[-1]['step'] + 1})" in result.stderr and rows[-1]["step"] < 59
    assert any(row["loss"] is None for row in rows)  # a NaN loss is written as null, never as a number
    checkpoints = [name for name in os.listdir(output_dir) if name.startswith("checkpoint-")]
    assert checkpoints and not os.path.exists(os.path.join(output_dir, "model.safetensors"))
    for name in checkpoints:
        assert checkpoint_problem(os.path.join(output_dir, name)) is None
        weights = load_file(os.path.join(output_dir, name, "model.safetensors"))
        assert all(torch.isfinite(tensor).all() for tensor in weights.values()), name


def test_save_total_limit_keeps_the_newest_complete_checkpoint(tmp_path, corpus):
    output_dir = str(tmp_path / "run")
    argv = tiny_args(output_dir, *corpus, max_steps=8, save_steps=4, save_total_limit=1)
    assert run_pretrain.main(argv) == 0
    assert sorted(n for n in os.listdir(output_dir) if n.startswith("checkpoint-")) == ["checkpoint-8"]
    # a crash mid-save left a newer, incomplete checkpoint behind
    shutil.copytree(os.path.join(output_dir, "checkpoint-8"), os.path.join(output_dir, "checkpoint-100"))
    os.remove(os.path.join(output_dir, "checkpoint-100", "checkpoint_manifest.json"))
    result = run_here(with_flag(argv, "max_steps", 12))
    assert result.returncode == 0, result.stderr
    assert "skipping checkpoint-100" in result.stdout and "Resuming from checkpoint-8" in result.stdout
    assert checkpoint_problem(os.path.join(output_dir, "checkpoint-12")) is None
    assert not os.path.exists(os.path.join(output_dir, "checkpoint-8"))
    assert os.path.isdir(os.path.join(output_dir, "checkpoint-100"))  # not ours to delete: named in a warning
