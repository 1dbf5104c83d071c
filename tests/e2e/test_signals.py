"""Stopping on a signal, as users and schedulers send them: Ctrl-C (SIGINT) finishes the step, saves and exits 130
with a line saying how to resume, a second Ctrl-C stops at once; SIGTERM to the whole process group, DataLoader
workers included, saves at the step boundary and exits 0; under launch.py (torchrun with a clean stop) every rank
saves the same step and the launcher exits 0 for SIGTERM, 130 for Ctrl-C."""

import json
import os
import signal
import subprocess
import sys

import pytest

from helpers import ROOT, app_env, read_log, run_here, tiny_args, wait_for_step, with_flag, write_jsonl
from pretraining.checkpoints import checkpoint_problem


def start(argv, launcher=None) -> subprocess.Popen:
    """The app (or launch.py with its flags) in a session of its own, as a shell or a scheduler starts a job."""
    command = [sys.executable, os.path.join(ROOT, "run_pretrain.py"), *argv] if launcher is None else [
        sys.executable, os.path.join(ROOT, "launch.py"), *launcher, os.path.join(ROOT, "run_pretrain.py"), *argv]
    return subprocess.Popen(command, cwd=ROOT, env=app_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


@pytest.fixture(scope="module")
def four_shards(tmp_path_factory, corpus):
    """The corpus in four files: two DataLoader workers (two streams) read two each."""
    folder = tmp_path_factory.mktemp("shards")
    with open(corpus[0], encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    for k in range(4):
        write_jsonl(folder / f"part{k}.jsonl", texts[k::4])
    return str(folder / "part*.jsonl"), corpus[1]


def long_run(output_dir, data, **overrides):
    return tiny_args(output_dir, *data, **{"max_steps": 500, **overrides})


def check_stopped_and_resume(output_dir, argv, process, stdout, exit_status):
    """The stopped run's exit status and checkpoint; the same command (in this process) resumes from it."""
    assert process.returncode == exit_status, stdout[-3000:]
    last = read_log(output_dir, "train")[-1]["step"]
    assert checkpoint_problem(os.path.join(output_dir, f"checkpoint-{last}")) is None
    result = run_here(with_flag(argv, "max_steps", last + 2))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"Resuming from checkpoint-{last}" in result.stdout
    assert [row["step"] for row in read_log(output_dir, "train")] == list(range(1, last + 3))  # each step once
    return last


def test_ctrl_c_saves_the_step_and_says_how_to_resume(tmp_path, corpus):
    output_dir = str(tmp_path / "run")
    argv = long_run(output_dir, corpus)
    process = start(argv)
    wait_for_step(output_dir, 3, process)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal: the foreground process group
    stdout, stderr = process.communicate(timeout=120)
    last = check_stopped_and_resume(output_dir, argv, process, stdout, 130)
    assert f"Stopped by Ctrl-C at step {last}; checkpoint saved. Run the same command to resume." in stdout
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert "Ctrl-C: finishing this step and saving a checkpoint" in stderr


def test_a_second_ctrl_c_stops_at_once_without_a_traceback(tmp_path, corpus):
    output_dir = str(tmp_path / "run")
    process = start(long_run(output_dir, corpus, save_steps=2))
    wait_for_step(output_dir, 3, process)
    os.killpg(process.pid, signal.SIGINT)
    while "Ctrl-C: finishing this step" not in process.stderr.readline():  # the first one is being handled
        pass
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stdout[-2000:] + stderr[-2000:]
    assert "Interrupted again: stopped at once" in stderr and "Traceback" not in stderr
    assert checkpoint_problem(os.path.join(output_dir, "checkpoint-2")) is None  # the last complete one: intact


def test_sigterm_to_the_process_group_with_dataloader_workers_saves_and_exits_0(tmp_path, four_shards):
    """A scheduler signals every process of the job: the two DataLoader workers ignore it, the main process stops at
    the step boundary with a complete checkpoint."""
    output_dir = str(tmp_path / "run")
    argv = long_run(output_dir, four_shards, dataloader_num_workers=2)
    process = start(argv)
    wait_for_step(output_dir, 3, process)
    workers = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) >= 3, workers  # the main process and its two DataLoader workers
    os.killpg(process.pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    last = check_stopped_and_resume(output_dir, argv, process, stdout, 0)
    assert f"Stopped by SIGTERM at step {last}" in stdout and "exited unexpectedly" not in stderr


def descendants(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(child) for child in children] + [grand for child in children for grand in descendants(int(child))]


@pytest.mark.parametrize("signum, exit_status", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_launch_py_stops_every_rank_at_the_same_step(tmp_path, four_shards, signum, exit_status):
    """Two gloo ranks with two DataLoader workers each. SIGTERM to every process of the job at once (the launcher,
    the ranks, their workers), as a cluster's scheduler sends it; Ctrl-C to the launcher's process group, as a
    terminal sends it (the ranks run in sessions of their own). Every rank saves the same step, and the launcher
    exits 0 for SIGTERM (a scheduler must not count a preemption as a failure), 130 for Ctrl-C."""
    output_dir = str(tmp_path / "run")
    argv = long_run(output_dir, four_shards, dataloader_num_workers=2)
    process = start(argv, launcher=["--nproc_per_node", "2", "--standalone"])
    wait_for_step(output_dir, 3, process)
    if signum == signal.SIGINT:
        os.killpg(process.pid, signum)
    for pid in [process.pid, *descendants(process.pid)] if signum == signal.SIGTERM else ():
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == exit_status, stdout[-3000:] + stderr[-3000:]
    last = read_log(output_dir, "train")[-1]["step"]
    checkpoint = os.path.join(output_dir, f"checkpoint-{last}")
    assert checkpoint_problem(checkpoint) is None
    assert {"run_state_rank0.pt", "run_state_rank1.pt"} <= set(os.listdir(checkpoint))
    assert "SignalException" not in stderr and "Traceback" not in stderr
    assert ("Stopped by Ctrl-C on every rank" in stderr) == (signum == signal.SIGINT)


def test_a_process_with_signal_ignoring_workers_still_exits(tmp_path):
    """A DataLoader iterator still referenced at the interpreter's exit: multiprocessing's exit handler would wait
    forever for workers that ignore its SIGTERM. With pretraining.signals imported, they are killed and the process
    exits."""
    script = tmp_path / "exit.py"
    script.write_text(
        "from torch.utils.data import DataLoader\n"
        "from pretraining.signals import ignore_stop_signals\n"
        "loader = DataLoader(list(range(64)), num_workers=2, worker_init_fn=ignore_stop_signals)\n"
        "iterator = iter(loader)\n"
        "next(iterator)\n")
    result = subprocess.run([sys.executable, str(script)], cwd=ROOT, env={**app_env(), "PYTHONPATH": ROOT},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
