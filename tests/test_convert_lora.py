"""`convert --adapter`: the merged weights equal PEFT's `merge_and_unload` for every option PEFT writes,
or the option is refused by name (issue 12, item 5)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from glm4_edge.manifest import read_manifest

from .conftest import _convert
from .test_convert import TEXTS, assert_one_line_error, hf_ids, ov_logits, run_cli, torch_logits

# Each is an adapter PEFT writes; the old merge used one scale for all, dropped saved modules, refused DoRA.
OPTIONS = {
    "rank-alpha-patterns": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                rank_pattern={"q_proj": 4}, alpha_pattern={"q_proj": 32, "down_proj": 4}),
    "rslora": dict(r=8, lora_alpha=16, target_modules=["q_proj", "o_proj"], use_rslora=True),
    "modules-to-save": dict(r=4, lora_alpha=8, target_modules=["k_proj"], modules_to_save=["lm_head", "embed_tokens"]),
    "dora": dict(r=4, lora_alpha=8, target_modules=["q_proj", "gate_up_proj", "embed_tokens"], use_dora=True),
    "lora-bias": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_bias=True, bias="all"),
}


def make_adapter(base: Path, out: Path, seed: int = 3, **options) -> Path:
    """Save a PEFT LoRA adapter for `base` whose every trainable tensor is random (not PEFT's no-op init)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), LoraConfig(**options))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                parameter.normal_(0, 0.2)
            elif "magnitude" in name:
                parameter.mul_(1.5)
            elif "modules_to_save" in name or (name.endswith("bias") and parameter.requires_grad):
                parameter.normal_(0, 0.1)
    model.save_pretrained(out)
    return out


def peft_merged(base: Path, adapter: Path) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload().state_dict()


@pytest.mark.parametrize("option", list(OPTIONS))
def test_merged_weights_equal_peft_merge_and_unload(workdir, tiny_glm4, option):
    import torch
    from glm4_edge.convert import families, lora
    from safetensors.torch import load_file

    adapter = make_adapter(tiny_glm4, workdir / f"lora-{option}", **OPTIONS[option])
    staged = workdir / f"lora-{option}-staged"
    staged.mkdir()
    loaded = lora.load(adapter)
    families.merge_lora_into(families.detect_family(tiny_glm4), staged, loaded)
    loaded.check_used()
    got = {}
    for file in staged.glob("*.safetensors"):
        got.update(load_file(file))
    reference, base = peft_merged(tiny_glm4, adapter), load_file(tiny_glm4 / "model.safetensors")
    assert set(got) == set(reference)
    changed = [name for name in reference if not torch.equal(base[name], reference[name])]
    assert changed  # the adapter does change the model
    for name in reference:
        torch.testing.assert_close(got[name], reference[name], rtol=1e-5, atol=1e-6, msg=name)


def test_converted_model_with_patterns_saved_modules_and_dora_matches_peft(workdir, tiny_glm4):
    adapter = make_adapter(tiny_glm4, workdir / "lora-all", r=8, lora_alpha=16, use_dora=True,
                           target_modules=["q_proj", "v_proj", "down_proj"], rank_pattern={"q_proj": 4},
                           alpha_pattern={"q_proj": 32}, modules_to_save=["lm_head"])
    out = workdir / "lora-all-fp16"
    result = run_cli("convert", str(tiny_glm4), "-o", str(out), "--weight-format", "fp16", "--adapter", str(adapter),
                     "--quiet")
    assert result.returncode == 0, result.stderr
    ids = hf_ids(tiny_glm4, TEXTS[0] + TEXTS[1])
    reference = torch_logits(tiny_glm4, ids, adapter=adapter)
    got = ov_logits(out, ids)
    assert np.abs(got - reference).max() < 0.02 * np.abs(reference).max()
    assert (got.argmax(-1) == reference.argmax(-1)).all()
    assert read_manifest(out).source["adapter"] == str(adapter)


def legacy_adapter(glm_adapter: Path, out: Path, config: dict) -> Path:
    """The same adapter for the legacy chatglm layout: q/k/v LoRAs fused into one on query_key_value
    (A stacked, B block-diagonal: B @ A is the three deltas stacked), names as THUDM's modeling_chatglm."""
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(glm_adapter / "adapter_model.safetensors")
    prefix = "base_model.model."
    legacy = {}
    for layer in range(config["num_hidden_layers"]):
        glm, old = f"{prefix}model.layers.{layer}.", f"{prefix}transformer.encoder.layers.{layer}."
        parts = [(state[f"{glm}self_attn.{p}.lora_A.weight"], state[f"{glm}self_attn.{p}.lora_B.weight"])
                 for p in ("q_proj", "k_proj", "v_proj")]
        legacy[f"{old}self_attention.query_key_value.lora_A.weight"] = torch.cat([a for a, _ in parts])
        legacy[f"{old}self_attention.query_key_value.lora_B.weight"] = torch.block_diag(*[b for _, b in parts])
        for kind in ("A", "B"):
            legacy[f"{old}mlp.dense_4h_to_h.lora_{kind}.weight"] = state[f"{glm}mlp.down_proj.lora_{kind}.weight"]
    legacy[f"{prefix}transformer.output_layer.weight"] = state[f"{prefix}lm_head.weight"]
    out.mkdir()
    save_file({k: v.contiguous() for k, v in legacy.items()}, out / "adapter_model.safetensors")
    adapter_config = json.loads((glm_adapter / "adapter_config.json").read_text())
    adapter_config.update(target_modules=["query_key_value", "dense_4h_to_h"], modules_to_save=["output_layer"],
                          rank_pattern={"query_key_value": 12, "dense_4h_to_h": 2},
                          alpha_pattern={"query_key_value": 24, "dense_4h_to_h": 16})
    (out / "adapter_config.json").write_text(json.dumps(adapter_config))
    return out


def test_legacy_chatglm_adapter_matches_peft_on_the_same_model(workdir, tiny_glm, tiny_chatglm):
    glm_adapter = make_adapter(tiny_glm, workdir / "lora-glm", r=4, lora_alpha=8,
                               target_modules=["q_proj", "k_proj", "v_proj", "down_proj"],
                               rank_pattern={"down_proj": 2}, alpha_pattern={"down_proj": 16},
                               modules_to_save=["lm_head"])
    config = json.loads((tiny_glm / "config.json").read_text())
    adapter = legacy_adapter(glm_adapter, workdir / "lora-legacy", config)
    folder = _convert(tiny_chatglm, workdir / "lora-legacy-fp16", weight_format="fp16", adapter=adapter)
    ids = hf_ids(tiny_glm, TEXTS[0])
    reference = torch_logits(tiny_glm, ids, adapter=glm_adapter)
    got = ov_logits(folder, ids)
    assert np.abs(got - reference).max() < 0.02 * np.abs(reference).max()
    assert np.abs(got - torch_logits(tiny_glm, ids)).max() > 0.2 * np.abs(reference).max()


@pytest.mark.parametrize("option,value", [
    ("layer_replication", [[0, 1], [0, 2]]),
    ("trainable_token_indices", [1, 2]),
    ("alora_invocation_tokens", [5]),
    ("target_parameters", ["mlp.down_proj.weight"]),
])
def test_options_that_cannot_be_merged_are_refused_by_name(workdir, tiny_glm4, option, value):
    adapter = workdir / f"lora-refused-{option}"
    shutil.copytree(make_adapter(tiny_glm4, workdir / f"lora-refused-{option}-src", r=4,
                                 target_modules=["q_proj"]), adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, option: value}))
    out = workdir / f"lora-refused-{option}-out"
    result = run_cli("convert", str(tiny_glm4), "-o", str(out), "--adapter", str(adapter))
    assert_one_line_error(result, option)
    assert not out.exists()


def test_broken_adapter_files_are_one_line_errors(workdir, tiny_glm4):
    from safetensors.torch import load_file, save_file

    adapter = make_adapter(tiny_glm4, workdir / "lora-broken", r=4, target_modules=["q_proj"])
    weights = load_file(adapter / "adapter_model.safetensors")
    cases = {}
    for case in ("json", "shape", "missing"):
        folder = cases[case] = workdir / f"lora-broken-{case}"
        shutil.copytree(adapter, folder)
    (cases["json"] / "adapter_config.json").write_text("{not json")
    a_name = next(name for name in weights if ".layers.0." in name and "lora_A" in name)
    save_file({**weights, a_name: weights[a_name][:, :64].contiguous()}, cases["shape"] / "adapter_model.safetensors")
    save_file({name.replace(".layers.1.", ".layers.7."): tensor for name, tensor in weights.items()},
              cases["missing"] / "adapter_model.safetensors")
    words = {"json": ["adapter_config.json", "not valid JSON"], "shape": ["another model", "q_proj"],
             "missing": ["layers.7", "another model"]}
    for case, folder in cases.items():
        out = workdir / f"lora-broken-{case}-out"
        result = run_cli("convert", str(tiny_glm4), "-o", str(out), "--adapter", str(folder))
        assert_one_line_error(result, *words[case])
        assert not out.exists() and not list(workdir.glob(f".{out.name}.*"))
