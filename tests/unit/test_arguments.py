"""The flags: the reference recipe as defaults, config files, the defaults a device decides, and bad input, refused
in one line before anything in output_dir changes (the app's main, in process)."""

import json
import os

import pytest
import torch

import run_pretrain
from helpers import bad_bytes, bad_file, fails_in_one_line, tiny_args, without_train_file
from pretraining.arguments import apply_device_defaults, parse_args
from pretraining.devices import DeviceReport, probe_device


def test_defaults_are_the_reference_recipe():
    model_args, data_args, args = parse_args([], probe_device())
    assert model_args.model_name_or_path is None and model_args.tokenizer_name == "HuggingFaceTB/SmolLM2-135M"
    assert (data_args.dataset_name, data_args.dataset_config_name) == ("HuggingFaceTB/smollm-corpus", "cosmopedia-v2")
    assert data_args.streaming and data_args.block_size == 2048 and data_args.text_column == "text"
    assert args.max_steps == 5000 and args.per_device_train_batch_size == 8
    assert args.learning_rate == 3e-3 and args.lr_scheduler_type == "linear" and args.warmup_steps > 0
    assert args.get_warmup_steps(5000) == 500
    assert (args.weight_decay, args.max_grad_norm, args.adam_beta1, args.adam_beta2) == (0.01, 1.0, 0.9, 0.95)
    assert args.save_steps == 1000 and args.eval_strategy == "steps" and args.eval_steps == 500
    assert args.generation_steps == 500 and args.generation_prompts and args.generation_max_new_tokens > 0
    if not torch.cuda.is_available():  # bf16 only where a GPU supports it: fp32 on this CPU
        assert args.bf16 is False and args.use_cpu and args.device.type == "cpu"


def test_config_file_with_flags_overriding_it(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("max_steps: 77\nblock_size: 256\nlearning_rate: 0.001\ngeneration_prompts: [a b, c]\n")
    _, data_args, args = parse_args([str(config), "--max_steps", "12"], DeviceReport("cpu"))
    assert (args.max_steps, data_args.block_size, args.learning_rate) == (12, 256, 1e-3)
    assert args.generation_prompts == ["a b", "c"]
    as_json = tmp_path / "run.json"
    as_json.write_text(json.dumps({"max_steps": 5, "streaming": False}))
    _, data_args, args = parse_args([str(as_json)], DeviceReport("cpu"))
    assert args.max_steps == 5 and data_args.streaming is False


def test_the_device_decides_the_defaults_left_open():
    """bf16, DataLoader workers, pinned memory and non-blocking batch copies follow what the device reports (decided
    from a report, so that a GPU's decision is tested here without one), a progress bar only on a terminal; a flag
    given always wins."""
    unset = {"use_cpu": False, "bf16": None, "fp16": False, "disable_tqdm": None, "dataloader_num_workers": None,
             "dataloader_pin_memory": True, "accelerator_config": None}

    def decided(device, interactive=False, **given):
        values = {**unset, **given}
        apply_device_defaults(values, device, interactive)
        return values

    h100 = DeviceReport("cuda", bf16=True, name="NVIDIA H100 80GB HBM3")
    assert decided(h100) == {
        "use_cpu": False, "bf16": True, "fp16": False, "disable_tqdm": True, "dataloader_num_workers": 2,
        "dataloader_pin_memory": True, "accelerator_config": {"non_blocking": True}}
    # a T4 or V100: torch would emulate bf16 (is_bf16_supported() says yes), slower than fp32
    assert decided(DeviceReport("cuda", bf16=False, name="Tesla T4"))["bf16"] is False
    assert decided(h100, fp16=True)["bf16"] is False  # --fp16 asked for: not both
    assert decided(h100, use_cpu=True)["bf16"] is False  # --use_cpu on a GPU machine
    assert decided(h100, accelerator_config="accelerate.json")["accelerator_config"] == "accelerate.json"
    assert decided(DeviceReport("cpu")) == {
        "use_cpu": True, "bf16": False, "fp16": False, "disable_tqdm": True, "dataloader_num_workers": 0,
        "dataloader_pin_memory": False, "accelerator_config": None}
    assert decided(DeviceReport("mps"), interactive=True)["disable_tqdm"] is False
    assert decided(h100, bf16=False, dataloader_num_workers=5)["bf16"] is False
    # and through the parser, on this machine's CPU
    explicit = parse_args(["--dataloader_num_workers", "3", "--disable_tqdm", "false"], DeviceReport("cpu"))[2]
    assert (explicit.bf16, explicit.dataloader_num_workers, explicit.disable_tqdm, explicit.use_cpu) == (
        False, 3, False, True)


BAD_INPUTS = {
    "missing file": (lambda t, c: ["--train_file", str(t / "nope.jsonl")], r"data file not found: .*nope\.jsonl"),
    "empty file": (lambda t, c: ["--train_file", bad_file(t, "e.jsonl", "")], r"data file is empty: .*e\.jsonl"),
    "not text": (lambda t, c: ["--train_file", bad_bytes(t, "z.jsonl", b'{"text": "\xff\xfe"}\n')],
                 r"data file is not UTF-8 text: .*z\.jsonl"),
    "glob matching nothing": (lambda t, c: ["--train_file", str(t / "shards" / "*.parquet")],
                              r"data file not found: .*shards/\*\.parquet"),
    "invalid json line": (lambda t, c: ["--train_file", bad_file(t, "b.jsonl", '{"text": "a"}\n{"text": \n')],
                          r"invalid JSON in .*b\.jsonl at line 2"),
    "missing text column": (lambda t, c: ["--train_file", bad_file(t, "m.jsonl", '{"body": "a", "id": 1}\n')],
                            r"text column 'text' not found in .*m\.jsonl line 1 \(columns: body, id\)"),
    "unknown override": (lambda t, c: ["--config_overrides", "hidden_sise=64"], r"unknown config field 'hidden_sise'"),
    "ill-typed override": (lambda t, c: ["--config_overrides", "num_hidden_layers=two"],
                           r"config_overrides: num_hidden_layers='two' does not fit num_hidden_layers \(invalid literal for int"),
    "shapes that don't divide": (lambda t, c: ["--config_overrides", "hidden_size=66,num_attention_heads=4"],
                                 r"hidden_size=66 must be divisible by num_attention_heads=4"),
    "block_size zero": (lambda t, c: ["--block_size", "0"], r"block_size must be positive, got 0"),
    "block_size too long": (lambda t, c: ["--block_size", "9000"], r"block_size 9000 is above max_position_embeddings 8192"),
    "learning rate": (lambda t, c: ["--learning_rate", "-1"], r"learning_rate must be positive, got -1"),
    "batch size": (lambda t, c: ["--per_device_train_batch_size", "0"], r"per_device_train_batch_size must be positive, got 0"),
    "steps": (lambda t, c: ["--max_steps", "0"], r"max_steps must be positive, got 0"),
    "ill-typed flag": (lambda t, c: ["--max_steps", "ten"], r"max_steps.*'ten'"),
    "unknown flag": (lambda t, c: ["--no_such_flag", "1"], r"unrecognized arguments: --no_such_flag"),
    "a mistyped flag": (lambda t, c: ["--learning_rat", "1e-3"],
                        r"unrecognized arguments: --learning_rat 1e-3 \(--learning_rat: did you mean --learning_rate\?\)"),
    "an unknown change": (lambda t, c: ["--allow_changes", "data,model"],
                          r"allow_changes: unknown part\(s\) model \(choose from data, schedule, batch\)"),
    "tokenizer path": (lambda t, c: ["--tokenizer_name", str(t / "no_tokenizer")], r"cannot load tokenizer: no such folder: /.*/no_tokenizer$"),
    "tokenizer offline": (lambda t, c: ["--tokenizer_name", "HuggingFaceTB/SmolLM2-135M"],
                          r"tokenizer .HuggingFaceTB/SmolLM2-135M.*as a Hub id: the Hub cannot be reached .*--tokenizer_name /"),
    "dataset offline": (lambda t, c: ["--train_file", "", "--dataset_name", "HuggingFaceTB/smollm-corpus"],
                        r"dataset .HuggingFaceTB/smollm-corpus.*the Hub cannot be reached.*--train_file"),
    "output_dir not writable": (lambda t, c: ["--output_dir", os.path.join(bad_file(t, "f", "x"), "sub")],
                                r"output_dir .*f/sub is not writable"),
    "flash attention here": (lambda t, c: ["--attn_implementation", "flash_attention_2"],
                             r"attn_implementation flash_attention_2 needs a CUDA GPU and the flash-attn package"),
    "re-reading the data": (lambda t, c: ["--ignore_data_skip", "false"],
                            r"ignore_data_skip=False is not supported: a resumed run restores its data position"),
    "negative shuffle buffer": (lambda t, c: ["--shuffle_buffer", "-1"], r"shuffle_buffer must be >= 0 \(0: no shuffling\), got -1"),
    "no shards at once": (lambda t, c: ["--shuffle_shards", "0"], r"shuffle_shards must be positive, got 0"),
    "decay fraction zero": (lambda t, c: ["--lr_scheduler_type", "warmup_stable_decay", "--decay_steps", "0"],
                            r"decay_steps must be a fraction of max_steps in \(0, 1\] or a whole number of steps above 1, got 0"),
    "decay neither fraction nor steps": (lambda t, c: ["--lr_scheduler_type", "warmup_stable_decay", "--decay_steps", "1.5"],
                                         r"decay_steps must be .*, got 1\.5"),
    "decay longer than the run": (lambda t, c: ["--lr_scheduler_type", "warmup_stable_decay", "--decay_steps", "29"],
                                  r"the decay \(29 steps\) must fit in max_steps 30 after the warmup \(3 steps\)"),
    "incomplete resume checkpoint": (lambda t, c: ["--resume_from_checkpoint", str(t / "out" / "checkpoint-7")],
                                     r"cannot resume from .*checkpoint-7: no manifest"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_in_one_line_and_changes_nothing(case, tmp_path, corpus, existing_output, capsys):
    extra, pattern = BAD_INPUTS[case]
    fails_in_one_line(tiny_args(existing_output, *corpus) + extra(tmp_path, corpus), pattern, existing_output, capsys)


def test_a_tokenizer_folder_without_its_files_says_so_whole(gguf_folder, corpus, existing_output, capsys):
    """A folder with only a GGUF file is no tokenizer folder: transformers' whole message, not its first line."""
    fails_in_one_line(tiny_args(existing_output, *corpus) + ["--tokenizer_name", gguf_folder],
                      r"cannot load tokenizer from .*: Couldn't instantiate the backend tokenizer from one of: \(1\) a "
                      r"`tokenizers` library serialization file, \(2\) .* \(3\) an equivalent slow tokenizer class",
                      existing_output, capsys)


def stages(*entries):
    return ["--data_stages", json.dumps([{"start_step": start, "dataset_mixture": mixture} for start, mixture in entries])]


BAD_STAGES = {
    "a stage after max_steps": (lambda c: stages((0, {c: 1}), (30, {c: 1})),
                                r"data_stages: a stage starts at step 30, not before --max_steps 30"),
    "steps not increasing": (lambda c: stages((0, {c: 1}), (12, {c: 1}), (12, {c: 0.5})),
                             r"data_stages: start steps must increase, got 12 then 12"),
    "not from step 0": (lambda c: stages((3, {c: 1})), r"data_stages: the first stage must start at step 0, got 3"),
    "an unknown source": (lambda c: stages((0, {c: 1}), (5, {"nope/missing.jsonl": 1})),
                          r"dataset_mixture source 'nope/missing\.jsonl': data file not found: nope/missing\.jsonl"),
    "a bad weight": (lambda c: stages((0, {c: 1}), (5, {c: "lots"})),
                     r"data_stages entry 2: dataset_mixture: the weight of '.*' must be a positive number, got 'lots'"),
    "not JSON": (lambda c: ["--data_stages", "[{start_step: 0}"], r"data_stages is not valid JSON"),
    "with a mixture too": (lambda c: stages((0, {c: 1})) + ["--dataset_mixture", f"{c}=1"],
                           r"--dataset_mixture and --data_stages both given"),
}


@pytest.mark.parametrize("case", list(BAD_STAGES))
def test_bad_data_stages_fail_in_one_line_and_change_nothing(case, corpus, existing_output, capsys):
    extra, pattern = BAD_STAGES[case]
    fails_in_one_line(without_train_file(tiny_args(existing_output, None)) + extra(corpus[0]), pattern,
                      existing_output, capsys)


def test_a_config_file_mapping_reaches_the_trainer_as_a_mapping(tmp_path):
    """A YAML mapping value (lr_scheduler_kwargs, and data_stages' list of mappings) is the JSON the flag takes:
    TrainingArguments gets a dict, not `k=v` strings."""
    config = tmp_path / "run.yaml"
    config.write_text("lr_scheduler_type: warmup_stable_decay\nlr_scheduler_kwargs: {min_lr_ratio: 0.0, "
                      "decay_type: cosine}\nmax_steps: 100\ndata_stages:\n  - {start_step: 0, dataset_mixture: "
                      "{a.jsonl: 1}}\n  - {start_step: 50, dataset_mixture: [a.jsonl=0.5, b.jsonl=0.5]}\n")
    _, data_args, args = parse_args([str(config)], DeviceReport("cpu"))
    assert args.lr_scheduler_kwargs == {"min_lr_ratio": 0.0, "decay_type": "cosine", "num_decay_steps": 20}
    assert [stage.start_step for stage in data_args.stages] == [0, 50]
    assert [(source.name, source.weight) for source in data_args.stages[1].mixture] == [("a.jsonl", 0.5),
                                                                                        ("b.jsonl", 0.5)]
    assert [source.name for source in data_args.mixture] == ["a.jsonl", "b.jsonl"]


@pytest.mark.parametrize("content", ["max_steps: [1, 2\n", "- just\n- a list\n"])
def test_malformed_config_file(tmp_path, content, capsys):
    path = bad_file(tmp_path, "bad.yaml", content)
    assert run_pretrain.main([path]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "bad.yaml" in err, err


