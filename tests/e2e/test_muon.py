"""--optim muon through the app: a kill -9 resumes exactly, an extension with changed settings, the run identity
refusing another optimizer unless allowed (both ways), DDP equal to one process, FSDP refused, the card and the
identity record.

    python -m pytest tests/e2e/test_muon.py -q
"""

import json
import os
import shutil
import signal

import pytest
import torch

from helpers import (fails_in_one_line, losses, read_log, run_here, run_torchrun, start_app, tiny_args, wait_for_step,
                     with_flag, write_jsonl)


@pytest.fixture(scope="module")
def muon_run(tmp_path_factory, corpus):
    """An uninterrupted 12-step Muon run, checkpoints every 4 steps: (output_dir, argv, its output)."""
    output_dir = str(tmp_path_factory.mktemp("muon"))
    argv = tiny_args(output_dir, *corpus, max_steps=12, save_steps=4, eval_steps=8, optim="muon")
    result = run_here(argv)
    assert result.returncode == 0, result.stderr
    return output_dir, argv, result.stdout


def learning_rates(output_dir) -> dict[int, float]:
    return {row["step"]: row["learning_rate"] for row in read_log(output_dir, "train")}


def optimizer_groups(checkpoint) -> list[dict]:
    return torch.load(os.path.join(checkpoint, "optimizer.pt"), weights_only=True)["param_groups"]


def test_the_run_says_which_optimizer_holds_what_and_records_it(muon_run):
    output_dir, _, stdout = muon_run
    assert ("optimizer: Muon (momentum 0.95, nesterov True, 5 Newton-Schulz steps, lr adjusted by match_rms_adamw, "
            "weight decay 0.01) for 14 tensors (73,728 parameters: the decoder layers' matrices); AdamW (betas "
            "0.9/0.95, eps 1e-08, weight decay 0.01 (none on norms)) for 6 tensors (3,146,048 parameters: embedding, "
            "norms)") in stdout
    record = json.load(open(os.path.join(output_dir, "run_identity.json")))
    assert record["segments"][0]["identity"]["schedule"]["optim"] == "muon"
    assert record["segments"][0]["identity"]["schedule"]["optim_args"] == {
        "momentum": 0.95, "nesterov": True, "ns_steps": 5, "adjust_lr_fn": "match_rms_adamw"}
    with open(os.path.join(output_dir, "README.md"), encoding="utf-8") as f:
        card = f.read()
    assert "| optim | muon |" in card and "| muon momentum | 0.95 |" in card and "| muon ns_steps | 5 |" in card
    # the checkpoint holds Muon's momentum buffers beside AdamW's moments
    state = torch.load(os.path.join(output_dir, "checkpoint-12", "optimizer.pt"), weights_only=True)["state"]
    assert sum("momentum_buffer" in s for s in state.values()) == 14
    assert sum("exp_avg" in s for s in state.values()) == 6


def test_a_killed_run_resumes_exactly_then_extends_with_other_settings(muon_run, tmp_path):
    baseline_dir, argv, _ = muon_run
    output_dir = str(tmp_path / "run")
    argv = with_flag(argv, "output_dir", output_dir)
    process = start_app(argv)
    wait_for_step(output_dir, 6, process)  # past checkpoint-4
    process.send_signal(signal.SIGKILL)
    process.wait()
    result = run_here(argv)
    assert result.returncode == 0, result.stderr
    assert "Resuming from checkpoint-" in result.stdout
    assert losses(output_dir) == pytest.approx(losses(baseline_dir), abs=1e-5)
    # +2 steps, Muon's momentum changed: the new schedule's lr trains steps 13-14, the momenta go on at 0.9
    extended = run_here(with_flag(argv, "max_steps", 14) + ["--optim_args", "momentum=0.9", "--allow_changes",
                                                            "schedule"])
    assert extended.returncode == 0, extended.stderr
    rates = learning_rates(output_dir)
    warmup = 2  # 10% of 14 steps, rounded up
    assert [rates[13], rates[14]] == pytest.approx([3e-3 * (14 - step) / (14 - warmup) for step in (12, 13)])
    assert optimizer_groups(os.path.join(output_dir, "checkpoint-14"))[0]["momentum"] == 0.9
    with open(os.path.join(output_dir, "README.md"), encoding="utf-8") as f:
        assert "| changed from step 12: schedule | optim_args: {" in f.read()


def test_another_optimizer_is_refused_unless_allowed_both_ways(muon_run, tmp_path, capsys):
    """Muon's checkpoint resumed with AdamW: refused in one line, nothing changed; allowed, AdamW starts without state
    and the schedule goes on. Then back to Muon the same way."""
    output_dir = str(tmp_path / "run")
    shutil.copytree(muon_run[0], output_dir)
    argv = with_flag(with_flag(muon_run[1], "output_dir", output_dir), "max_steps", 14)
    adamw = with_flag(argv, "optim", "adamw_torch_fused")
    fails_in_one_line(adamw, r"cannot resume from .*checkpoint-12 with other settings than its run's \(schedule: "
                             r"optim: 'muon' -> 'adamw_torch_fused'.*\): run the same command, or pass --allow_changes "
                             "schedule", output_dir, capsys)
    assert run_here(adamw + ["--allow_changes", "schedule"]).returncode == 0
    groups = optimizer_groups(os.path.join(output_dir, "checkpoint-14"))
    assert len(groups) == 2 and all("betas" in group for group in groups)  # the Trainer's AdamW, decay and no decay
    back = with_flag(argv, "max_steps", 16) + ["--allow_changes", "schedule"]
    assert run_here(back).returncode == 0
    assert "momentum" in optimizer_groups(os.path.join(output_dir, "checkpoint-16"))[0]
    rates = learning_rates(output_dir)
    assert [row for row in sorted(rates)] == list(range(1, 17))
    warmup = 2  # 10% of 16 steps, rounded up
    assert [rates[15], rates[16]] == pytest.approx([3e-3 * (16 - step) / (16 - warmup) for step in (14, 15)])
    record = json.load(open(os.path.join(output_dir, "run_identity.json")))
    assert [segment["identity"]["schedule"]["optim"] for segment in record["segments"]] == [
        "muon", "adamw_torch_fused", "muon"]


def test_ddp_trains_as_one_process_at_the_same_global_batch(tmp_path, corpus):
    """Two ranks of 4 sequences (each rank one of the two files) against one process reading both files with two
    DataLoader workers (one file each, their batches alternating) and 2 micro-steps of 4: the same 8 sequences per
    step (unshuffled: a rank's shuffle and a worker's have different seeds), the same losses."""
    with open(corpus[0], encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    write_jsonl(tmp_path / "part0.jsonl", texts[0::2])
    write_jsonl(tmp_path / "part1.jsonl", texts[1::2])
    files = str(tmp_path / "part*.jsonl")
    sizes = {"max_steps": 8, "save_steps": 100, "eval_steps": 100, "optim": "muon", "shuffle_buffer": 0}
    ddp_dir, one_dir = str(tmp_path / "ddp"), str(tmp_path / "one")
    result = run_torchrun(tiny_args(ddp_dir, files, corpus[1], **sizes))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    one = run_here(tiny_args(one_dir, files, corpus[1], **sizes, dataloader_num_workers=2,
                             gradient_accumulation_steps=2))
    assert one.returncode == 0, one.stderr
    assert losses(ddp_dir) == pytest.approx(losses(one_dir), abs=1e-4)
    assert read_log(ddp_dir, "eval")[-1]["eval_loss"] == pytest.approx(read_log(one_dir, "eval")[-1]["eval_loss"],
                                                                       abs=1e-4)


def test_fsdp_is_refused_at_start_up_in_one_line(tmp_path, corpus, capsys):
    output_dir = str(tmp_path / "run")
    os.makedirs(output_dir)
    argv = tiny_args(output_dir, *corpus, optim="muon") + ["--fsdp", "full_shard auto_wrap"]
    fails_in_one_line(argv, r"--optim muon does not run under FSDP: .*orthogonalizing a shard is not Muon", output_dir,
                      capsys)
