"""`convert --context`: the checkpoint's own RoPE window decides whether YaRN is written, and the
manifest's context length is what the exported RoPE supports (issue 12, item 4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from glm4_edge.manifest import read_manifest

from .conftest import _convert
from .test_convert import TEXTS, assert_one_line_error, hf_ids, ov_logits, run_cli, torch_logits

YARN_4X = {"factor": 4.0, "original_max_position_embeddings": 32768}


def with_config(source: Path, folder: Path, **changes) -> Path:
    """A copy of `source` (weights linked, not copied) whose config.json has `changes` (None deletes)."""
    folder.mkdir()
    for item in source.iterdir():
        if item.suffix == ".safetensors":
            (folder / item.name).symlink_to(item)
        elif item.is_file():
            shutil.copy2(item, folder / item.name)
    config = json.loads((source / "config.json").read_text())
    config.update(changes)
    config = {key: value for key, value in config.items() if value is not None}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.mark.parametrize("config,window", [
    ({"max_position_embeddings": 131072}, 131072),  # glm4 / glm: no scaling
    ({"seq_length": 131072, "rope_ratio": 500}, 131072),  # legacy chatglm
    ({"max_position_embeddings": 32768, "rope_scaling": {"type": "yarn", **YARN_4X}}, 131072),
    ({"max_position_embeddings": 32768, "rope_scaling": {"rope_type": "yarn", **YARN_4X}}, 131072),
    ({"max_position_embeddings": 131072, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, **YARN_4X}},
     131072),
    ({"max_position_embeddings": 32768, "rope_scaling": {"type": "yarn", "factor": 4.0}}, 131072),  # original = max
    ({"max_position_embeddings": 131072, "rope_parameters": {"rope_type": "yarn",  # factor = max / original
                                                            "original_max_position_embeddings": 32768}}, 131072),
    ({"max_position_embeddings": 8192, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}, 8192),
    # transformers 5 reads rope_scaling before rope_parameters
    ({"max_position_embeddings": 32768, "rope_scaling": {"type": "yarn", **YARN_4X},
      "rope_parameters": {"rope_type": "default"}}, 131072),
])
def test_context_window_in_every_form_a_config_states_it(config, window):
    from glm4_edge.convert.families import apply_context, context_window

    assert context_window(config) == window
    assert apply_context(config, "glm4", window) is config  # within the window: untouched
    assert apply_context(config, "glm4", window // 2) is config


@pytest.mark.parametrize("config,original", [
    ({"max_position_embeddings": 131072}, 131072),
    ({"max_position_embeddings": 32768, "rope_scaling": {"type": "yarn", **YARN_4X}}, 32768),
    ({"max_position_embeddings": 131072, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, **YARN_4X}},
     32768),
])
def test_beyond_the_window_yarn_scales_the_pretrained_window_as_transformers_reads_it(config, original):
    from glm4_edge.convert.families import apply_context, context_window
    from transformers import Glm4Config

    scaled = apply_context({**config, "model_type": "glm4"}, "glm4", 262144)
    assert context_window(scaled) == 262144
    assert scaled["rope_scaling"] == scaled["rope_parameters"]
    rope = Glm4Config(**scaled).rope_parameters  # what the exporter will build the model from
    assert rope["rope_type"] == "yarn" and rope["factor"] == 262144 / original
    assert rope["original_max_position_embeddings"] == original
    assert rope["rope_theta"] == 1e4 and rope["partial_rotary_factor"] == 0.5


def test_other_scaling_or_families_beyond_the_window_are_refused():
    from glm4_edge.convert.families import apply_context

    from glm4_edge.errors import Glm4EdgeError

    with pytest.raises(Glm4EdgeError, match="linear"):
        apply_context({"max_position_embeddings": 4096, "rope_scaling": {"type": "linear", "factor": 2.0}},
                      "glm4", 16384)
    with pytest.raises(Glm4EdgeError, match="131072"):
        apply_context({"max_position_embeddings": 131072}, "glm", 262144)


@pytest.fixture(scope="module")
def native_128k(workdir, tiny_glm4) -> Path:
    return with_config(tiny_glm4, workdir / "ctx-native-128k", max_position_embeddings=131072)


@pytest.fixture(scope="module")
def plain_128k(workdir, native_128k) -> Path:
    return _convert(native_128k, workdir / "ctx-128k-plain", weight_format="fp16")


def test_context_within_the_native_window_changes_nothing(workdir, native_128k, plain_128k):
    folder = _convert(native_128k, workdir / "ctx-128k-64k", weight_format="fp16", context=65536)
    ids = hf_ids(native_128k, TEXTS[0])
    assert np.array_equal(ov_logits(folder, ids), ov_logits(plain_128k, ids))
    config = json.loads((folder / "config.json").read_text())
    assert "rope_scaling" not in config and config["rope_parameters"]["rope_type"] == "default"
    for model in (folder, plain_128k):
        manifest = read_manifest(model)
        assert manifest.context_length == 131072 and manifest.rope_scaling is None


def test_context_beyond_the_native_window_scales_from_it(workdir, native_128k, plain_128k):
    folder = _convert(native_128k, workdir / "ctx-128k-256k", weight_format="fp16", context=262144)
    config = json.loads((folder / "config.json").read_text())
    rope = config["rope_parameters"]  # transformers 5 writes the config back with this key only
    assert rope["rope_type"] == "yarn" and rope["factor"] == 2.0 and config["max_position_embeddings"] == 262144
    assert rope["original_max_position_embeddings"] == 131072
    manifest = read_manifest(folder)
    assert manifest.context_length == 262144 and manifest.rope_scaling["factor"] == 2.0
    ids = hf_ids(native_128k, TEXTS[0])
    got = ov_logits(folder, ids)
    assert np.abs(got - ov_logits(plain_128k, ids)).max() > 1e-3  # YaRN is baked into the IR
    keys = ("rope_parameters", "max_position_embeddings")  # the exported config, same weights
    exported = with_config(native_128k, workdir / "ctx-128k-256k-torch", **{key: config[key] for key in keys})
    reference = torch_logits(exported, ids)
    assert np.abs(got - reference).max() < 0.05 * np.abs(reference).max()


def test_existing_yarn_sets_the_manifest_and_is_extended_from_its_original_window(workdir, tiny_glm4):
    source = with_config(tiny_glm4, workdir / "ctx-yarn-4x", max_position_embeddings=32768,
                         rope_scaling={"type": "yarn", **YARN_4X})
    plain = _convert(source, workdir / "ctx-yarn-4x-plain", weight_format="fp16")
    manifest = read_manifest(plain)
    assert manifest.context_length == 131072 and manifest.rope_scaling["factor"] == 4.0
    longer = _convert(source, workdir / "ctx-yarn-4x-256k", weight_format="fp16", context=262144)
    rope = json.loads((longer / "config.json").read_text())["rope_parameters"]
    assert rope["factor"] == 8.0 and rope["original_max_position_embeddings"] == 32768
    assert read_manifest(longer).context_length == 262144


def test_legacy_chatglm_window_is_its_seq_length(workdir, tiny_chatglm):
    from glm4_edge.convert.families import detect_family

    seq_length = json.loads((tiny_chatglm / "config.json").read_text())["seq_length"]
    assert detect_family(tiny_chatglm).context_length == seq_length
    out = workdir / "ctx-chatglm-beyond"
    result = run_cli("convert", str(tiny_chatglm), "-o", str(out), "--context", str(seq_length * 2), "--quiet")
    assert_one_line_error(result, "--context", str(seq_length))
    assert not out.exists()
