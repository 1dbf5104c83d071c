"""An output folder belongs to one run: a folder of files this app did not write is refused (or replaced with
--replace_output_dir), the starting weights are never an output, a second run on a folder in use is refused naming
the holder, and a resume with another model, data or schedule is refused listing old and new values, unless
--allow_changes takes the change (which applies, and the model card says so)."""

import json
import os
import re

import pytest
import torch

import run_pretrain
from helpers import fails_in_one_line, read_log, run_here, start_app, tiny_args, wait_for_step, with_flag, write_jsonl

SHORT = dict(max_steps=4, save_steps=2, eval_steps=4, generation_steps=0)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, corpus):
    """A finished 4-step run (checkpoints at 2 and 4): (output_dir, its argv)."""
    output_dir = str(tmp_path_factory.mktemp("finished"))
    argv = tiny_args(output_dir, *corpus, **SHORT)
    assert run_pretrain.main(argv) == 0
    return output_dir, argv


def test_a_folder_of_other_files_is_refused_then_replaced_on_request(tmp_path, corpus, capsys, tokenizer):
    """A model saved there by a script (not a run of this app): refused in one line naming what is there, nothing
    changed; --replace_output_dir replaces it with the run."""
    from configuration_smollm2 import SmolLM2Config
    from modeling_smollm2 import SmolLM2ForCausalLM

    folder = tmp_path / "someone_elses"
    SmolLM2ForCausalLM(SmolLM2Config.tiny()).save_pretrained(folder)
    (folder / "README.md").write_text("my notes")
    capsys.readouterr()  # save_pretrained's progress bar
    argv = tiny_args(str(folder), *corpus, **SHORT)
    fails_in_one_line(argv, r"output_dir .*someone_elses holds files this app did not write \(README\.md, config\.json, "
                            r"configuration_smollm2\.py, .*\): pass --replace_output_dir to replace them", str(folder), capsys)
    assert run_pretrain.main(argv + ["--replace_output_dir", "true"]) == 0
    assert "my notes" not in (folder / "README.md").read_text() and os.path.isdir(folder / "checkpoint-4")


def test_the_starting_weights_are_never_an_output(finished, tmp_path, corpus, capsys):
    output_dir, _ = finished
    argv = tiny_args(output_dir, *corpus, **SHORT, config_overrides="", model_name_or_path=output_dir,
                     replace_output_dir="true")
    fails_in_one_line(argv, r"--output_dir .* holds the starting weights .*: the starting weights are never an output",
                      output_dir, capsys)


def test_a_second_run_on_a_folder_in_use_is_refused_naming_the_holder(tmp_path, corpus, capsys):
    output_dir = str(tmp_path / "run")
    argv = tiny_args(output_dir, *corpus, max_steps=400)
    first = start_app(argv)
    try:
        wait_for_step(output_dir, 2, first)
        assert run_pretrain.main(argv) == 2
        err = capsys.readouterr().err
        assert re.search(rf"output_dir .*run is in use by another run \(host \S+, pid {first.pid}, since .*\): wait for "
                         "it to end, or choose another --output_dir", err), err
        assert err.count("\n") == 1
        assert first.poll() is None  # untouched: it goes on
    finally:
        first.kill()
        first.wait()
    # a dead holder leaves its lock file, but no lock: the next run goes on
    assert os.path.exists(os.path.join(output_dir, ".run.lock"))
    result = run_here(with_flag(argv, "max_steps", 3))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("change, expected", [
    (("learning_rate", 1e-4), r"schedule: learning_rate: 0\.003 -> 0\.0001"),
    (("block_size", 32), r"data: block_size: 64 -> 32"),
    (("warmup_steps", 0), r"schedule: warmup_steps: 0\.1 -> 0\.0"),
])
def test_a_changed_setting_is_refused_on_resume(finished, corpus, capsys, change, expected):
    output_dir, argv = finished
    argv = with_flag(with_flag(argv, "max_steps", 6), *change)
    fails_in_one_line(argv, rf"cannot resume from .*checkpoint-4 with other settings than its run's \({expected}\): run "
                            r"the same command, or pass --allow_changes \w+ to take them from step 4 on", output_dir,
                      capsys)


@pytest.mark.parametrize("overrides, expected", [
    ("num_hidden_layers=2,hidden_size=64,intermediate_size=128,num_attention_heads=8,num_key_value_heads=4",
     r"head_dim: 16 -> 8; num_attention_heads: 4 -> 8; num_key_value_heads: 2 -> 4"),
    ("num_hidden_layers=1,hidden_size=64,intermediate_size=128,num_attention_heads=4,num_key_value_heads=2",
     r"num_hidden_layers: 2 -> 1"),
    ("num_hidden_layers=2,hidden_size=96,intermediate_size=128,num_attention_heads=4,num_key_value_heads=2",
     r"head_dim: 16 -> 24; hidden_size: 64 -> 96"),
])
def test_another_model_shape_is_refused_even_when_changes_are_allowed(finished, capsys, overrides, expected):
    """Same tensor shapes under another head layout, fewer layers, another width: one line each, not the old
    weights read wrongly, an optimizer error or a size-mismatch traceback."""
    output_dir, argv = finished
    argv = with_flag(with_flag(argv, "max_steps", 6), "config_overrides", overrides) + [
        "--allow_changes", "data,schedule,batch"]
    fails_in_one_line(argv, rf"cannot resume from .*checkpoint-4: this command has another model or tokenizer "
                            rf"\({expected}\); a run's weights keep their shape", output_dir, capsys)


def test_allowed_changes_apply_and_the_card_says_so(finished, tmp_path, corpus):
    """--allow_changes schedule: the new learning rate trains from step 5 on; --allow_changes data: a new file is
    read from its start. The card lists both changes with their steps."""
    import shutil

    output_dir = str(tmp_path / "run")
    shutil.copytree(finished[0], output_dir)
    argv = [output_dir if value == finished[0] else value for value in finished[1]]
    lower = with_flag(with_flag(argv, "max_steps", 6), "learning_rate", 1e-4) + ["--allow_changes", "schedule",
                                                                                "--weight_decay", "0.05"]
    assert run_pretrain.main(lower) == 0
    rows = {row["step"]: row for row in read_log(output_dir, "train")}
    warmup = 1  # 10% of 6 steps, rounded up
    assert rows[5]["learning_rate"] == pytest.approx(1e-4 * (6 - 4) / (6 - warmup))
    # the resumed AdamW took the new weight decay (the norms' group none), its moments kept
    optimizer = torch.load(os.path.join(output_dir, "checkpoint-6", "optimizer.pt"), weights_only=True)
    assert [group["weight_decay"] for group in optimizer["param_groups"]] == [0.05, 0.0]
    new_data = write_jsonl(tmp_path / "new.jsonl", [f"a new document {i} " * 12 for i in range(200)])
    more = with_flag(with_flag(lower, "max_steps", 8), "train_file", new_data)
    more[more.index("--allow_changes") + 1] = "data"
    assert run_pretrain.main(more) == 0
    with open(os.path.join(output_dir, "README.md"), encoding="utf-8") as f:
        card = f.read()
    assert "| changed from step 4: schedule | learning_rate: 0.003 -> 0.0001; weight_decay: 0.01 -> 0.05 |" in card
    assert re.search(r"\| changed from step 6: data \| train_file: '.*train\.jsonl' -> '.*new\.jsonl' \|", card)
    record = json.load(open(os.path.join(output_dir, "run_identity.json")))
    assert [segment["from_step"] for segment in record["segments"]] == [0, 4, 6]
