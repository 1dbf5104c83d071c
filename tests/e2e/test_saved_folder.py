"""The saved-folder contract, in fresh processes: whatever writes a SmolLM2 folder with save_pretrained (a plain
script that imports the model file, a model read from GGUF weights, the app's run), the folder holds every file its
`auto_map` names and loads in another process, elsewhere, with trust_remote_code=True (AutoConfig, AutoModel,
AutoModelForCausalLM, pipeline); no saved config.json holds a runtime setting (`use_speed_ops`)."""

import json
import os
import subprocess
import sys
import textwrap

from helpers import GGUF_NAME, ROOT, TOKENIZER_DIR

# a script of a user's, not the app: it imports the model file directly and saves what it built or loaded
SAVE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])  # the project's root: the model files, nothing of the app
    import torch
    from transformers import AutoTokenizer
    from modeling_smollm2 import SmolLM2Config, SmolLM2ForCausalLM

    folder, source = sys.argv[2], sys.argv[3]
    tokenizer = AutoTokenizer.from_pretrained(sys.argv[4])
    if source == "random":
        torch.manual_seed(0)
        model = SmolLM2ForCausalLM(SmolLM2Config.tiny(vocab_size=len(tokenizer))).eval()
    else:  # a folder holding the GGUF file sys.argv[5]
        model = SmolLM2ForCausalLM.from_pretrained(source, gguf_file=sys.argv[5], dtype=torch.float32).eval()
    model.config.use_speed_ops = True  # a runtime setting: never saved
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    input_ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits, hidden = model(input_ids).logits, model.model(input_ids).last_hidden_state
    generated = model.generate(input_ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(generated[0, input_ids.shape[1]:], skip_special_tokens=True)
    torch.save({"input_ids": input_ids, "logits": logits, "hidden": hidden, "text": text}, folder + "/expected.pt")
    """
)

LOAD_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, pipeline
    folder = sys.argv[1]
    expected = torch.load(folder + "/expected.pt")
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert type(config).__name__ == "SmolLM2Config" and type(config).__module__.startswith("transformers_modules")
    assert config.use_speed_ops is False  # not saved: the class default
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert not getattr(model, "is_quantized", False)
    with torch.no_grad():
        logits = model(expected["input_ids"]).logits
    torch.testing.assert_close(logits, expected["logits"], atol=1e-5, rtol=0)
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(base).__name__ == "SmolLM2Model", type(base)
    with torch.no_grad():
        torch.testing.assert_close(base(expected["input_ids"]).last_hidden_state, expected["hidden"], atol=1e-5, rtol=0)
    # the speed ops travel too: a training step with them on
    model.config.use_speed_ops = True
    model.train()
    loss = model(expected["input_ids"], labels=expected["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss)
    generator = pipeline("text-generation", model=folder, trust_remote_code=True)
    text = generator("The capital of France is", max_new_tokens=5, do_sample=False,
                     return_full_text=False)[0]["generated_text"]
    assert text == expected["text"], (text, expected["text"])
    print("fresh process ok:", text)
    """
)


def fresh_process(script, *args, cwd, tmp_path, timeout=300) -> subprocess.CompletedProcess:
    """`script` in a new Python process run from `cwd`, with nothing of the project on its path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def check_complete_and_loads_elsewhere(folder, tmp_path) -> str:
    """Every file of auto_map is in `folder`, its config.json holds no runtime setting, and it loads elsewhere."""
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_smollm2.SmolLM2Config",
        "AutoModel": "modeling_smollm2.SmolLM2Model",
        "AutoModelForCausalLM": "modeling_smollm2.SmolLM2ForCausalLM",
    }
    for reference in config["auto_map"].values():
        assert (folder / (reference.split(".")[0] + ".py")).is_file(), reference
    assert (folder / "smollm2_ops.py").is_file()  # imported by modeling_smollm2.py
    assert not {"use_speed_ops", "loss_chunk_size", "quantization_config"} & set(config), config
    elsewhere = tmp_path / "elsewhere"  # holds no copy of the model files, so the import must be the saved one
    elsewhere.mkdir(exist_ok=True)
    result = fresh_process(LOAD_SCRIPT, folder, cwd=elsewhere, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fresh process ok" in result.stdout
    return result.stdout


def test_a_model_saved_by_a_plain_script_loads_anywhere(tmp_path):
    folder = tmp_path / "saved"
    saved = fresh_process(SAVE_SCRIPT, ROOT, folder, "random", TOKENIZER_DIR, cwd=tmp_path, tmp_path=tmp_path)
    assert saved.returncode == 0, saved.stderr[-3000:]
    check_complete_and_loads_elsewhere(folder, tmp_path)


def test_a_model_read_from_gguf_weights_saves_and_loads_anywhere(tmp_path, gguf_folder):
    """The real SmolLM2-135M-Instruct weights, dequantized from the GGUF file: an ordinary model that saves (a model
    transformers leaves marked quantized cannot) and loads elsewhere as the same network, which knows Paris."""
    folder = tmp_path / "from_gguf"
    saved = fresh_process(SAVE_SCRIPT, ROOT, folder, gguf_folder, TOKENIZER_DIR, GGUF_NAME, cwd=tmp_path,
                          tmp_path=tmp_path, timeout=600)
    assert saved.returncode == 0, saved.stderr[-3000:]
    assert "Paris" in check_complete_and_loads_elsewhere(folder, tmp_path)


def test_importing_the_model_file_maps_the_auto_classes_and_makes_saves_complete(tmp_path):
    """In a process that imported the model file (as an in-library model): model_type "smollm2" maps to the Auto
    classes, and any save_pretrained, of a model or of a config alone, copies the code its auto_map names."""
    script = (
        "import os, sys, modeling_smollm2\n"
        "from transformers import AutoModel, AutoModelForCausalLM\n"
        "config = modeling_smollm2.SmolLM2Config.tiny()\n"
        "assert type(AutoModelForCausalLM.from_config(config)) is modeling_smollm2.SmolLM2ForCausalLM\n"
        "assert type(AutoModel.from_config(config)) is modeling_smollm2.SmolLM2Model\n"
        "assert modeling_smollm2.SmolLM2ForCausalLM._auto_class == 'AutoModelForCausalLM'\n"
        "AutoModelForCausalLM.from_config(config).save_pretrained(sys.argv[1] + '/model')\n"
        "config.save_pretrained(sys.argv[1] + '/config')\n"
        "for name in ('configuration_smollm2.py', 'modeling_smollm2.py', 'smollm2_ops.py'):\n"
        "    assert os.path.exists(sys.argv[1] + '/model/' + name), name\n"
        "assert os.path.exists(sys.argv[1] + '/config/configuration_smollm2.py')\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_apps_run_loads_with_remote_code_and_pipeline(tiny_run, tmp_path):
    output_dir, _ = tiny_run
    for name in ("model.safetensors", "config.json", "configuration_smollm2.py", "modeling_smollm2.py",
                 "smollm2_ops.py", "tokenizer.json", "tokenizer_config.json"):
        assert os.path.isfile(os.path.join(output_dir, name)), name
    for folder in (output_dir, os.path.join(output_dir, "checkpoint-10")):
        config = json.load(open(os.path.join(folder, "config.json")))
        assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_smollm2.SmolLM2ForCausalLM"
        assert "use_speed_ops" not in config and "loss_chunk_size" not in config, folder  # trained with them on
    assert json.load(open(os.path.join(output_dir, "config.json")))["use_cache"] is True
    # a fresh process that cannot import the project
    code = (
        "import sys; from transformers import AutoModelForCausalLM, pipeline\n"
        f"m = AutoModelForCausalLM.from_pretrained({output_dir!r}, trust_remote_code=True)\n"
        "assert type(m).__name__ == 'SmolLM2ForCausalLM', type(m)\n"
        f"p = pipeline('text-generation', model={output_dir!r}, trust_remote_code=True)\n"
        "print(p('The for statement', max_new_tokens=5, do_sample=False)[0]['generated_text'])\n"
    )
    result = fresh_process(code, cwd=tmp_path, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("The for statement")
