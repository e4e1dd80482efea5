"""GLM-4V benchmark support: the shard-by-shard checkpoint builder and convert's resource estimate for GLM-4V.

Cheap by design: tiny shapes only; the full-size shape is checked through its tensor tables and config.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from glm4_edge.convert.vision_synthetic import build_vision_checkpoint

    return build_vision_checkpoint(tmp_path_factory.mktemp("glm4v-bench") / "tiny")


@pytest.fixture(scope="module")
def sharded(tiny) -> Path:
    """The builder at the tiny shape, with shards small enough that there are several of each kind."""
    from glm4_edge.convert.synthetic import TINY
    from glm4_edge.convert.vision_synthetic import TINY_VISION, build_sharded_vision_checkpoint

    vocab = json.loads((tiny / "config.json").read_text())["padded_vocab_size"]
    return build_sharded_vision_checkpoint(tiny.parent / "sharded", dataclasses.replace(TINY, vocab_size=vocab),
                                           TINY_VISION, shard_bytes=100_000)


def _tensors(folder: Path) -> dict[str, tuple[tuple, str, str]]:
    """name -> (shape, dtype, shard file) over every shard of a folder."""
    from safetensors import safe_open

    found = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_slice(name)
                found[name] = (tuple(tensor.get_shape()), tensor.get_dtype(), file.name)
    return found


def test_sharded_builder_writes_the_tiny_checkpoints_tensors_in_bf16_shards(tiny, sharded):
    built, reference = _tensors(sharded), _tensors(tiny)
    assert {n: s for n, (s, _, _) in built.items()} == {n: s for n, (s, _, _) in reference.items()}
    assert {dtype for _, dtype, _ in built.values()} == {"BF16"}
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {name: file for name, (_, _, file) in built.items()}
    assert index["metadata"]["total_size"] == sum(2 * math.prod(s) for s, _, _ in built.values())
    vision_files = {f for n, (_, _, f) in built.items() if n.startswith("transformer.vision.")}
    language_files = {f for n, (_, _, f) in built.items() if not n.startswith("transformer.vision.")}
    assert len(vision_files) > 1 and len(language_files) > 1 and not vision_files & language_files
    files = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert files[-1] == f"model-{len(files):05d}-of-{len(files):05d}.safetensors"


def test_sparse_language_shards_read_back_as_zero_matrices_and_real_vectors(tiny, tmp_path):
    """The sparse builder: safetensors reads its hand-written shards (same names, shapes, dtype as the
    random build), matrices are zero but for one element, its place and value unique to each, and take
    almost no disk blocks, norms are 1.0; the tower stays random."""
    import torch
    from glm4_edge.convert.synthetic import TINY
    from glm4_edge.convert.vision_synthetic import TINY_VISION, build_sharded_vision_checkpoint
    from safetensors import safe_open

    vocab = json.loads((tiny / "config.json").read_text())["padded_vocab_size"]
    sparse = build_sharded_vision_checkpoint(tmp_path / "sparse", dataclasses.replace(TINY, vocab_size=vocab),
                                             TINY_VISION, shard_bytes=100_000, sparse_language=True)
    built, reference = _tensors(sparse), _tensors(tiny)
    assert {n: s for n, (s, _, _) in built.items()} == {n: s for n, (s, _, _) in reference.items()}
    assert {dtype for _, dtype, _ in built.values()} == {"BF16"}
    seen, firsts = set(), []
    for file in sorted(sparse.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            names = list(handle.keys())
            for name in names:
                tensor = handle.get_tensor(name)
                if name.startswith("transformer.vision."):
                    assert tensor.float().abs().sum() > 0 or "norm" in name or "bias" in name
                elif tensor.dim() > 1:
                    assert int(tensor.count_nonzero()) == 1
                    place = int(tensor.flatten().nonzero()[0])
                    firsts.append((place, float(tensor.flatten()[place])))
                    seen.add("matrix")
                elif "norm" in name:
                    assert torch.equal(tensor, torch.ones_like(tensor))
                    seen.add("norm")
                else:
                    assert not tensor.any()
        if not any(n.startswith("transformer.vision.") for n in names):
            logical = file.stat().st_size
            assert file.stat().st_blocks * 512 < logical / 2  # holes, not written zeros
    assert seen == {"matrix", "norm"}
    assert len({place for place, _ in firsts}) == len({value for _, value in firsts}) == len(firsts)  # no two alike


def test_sharded_checkpoint_converts_as_glm4v_and_its_text_view_as_a_text_model(sharded, tmp_path):
    from glm4_edge.convert import families, vision_export
    from glm4_edge.convert.vision_reference import load_vision_tower
    from glm4_edge.convert.vision_synthetic import text_only_view

    assert families.detect_family(sharded).vision
    vision_export.check_source(sharded)
    assert load_vision_tower(sharded) is not None  # every tensor present, with the config's shapes
    text = text_only_view(sharded, tmp_path / "text")
    info = families.detect_family(text)
    assert info.family == "chatglm" and not info.vision
    assert not any(name.startswith("transformer.vision.") for name in _tensors(text))
    language = [p for p in sharded.glob("*.safetensors") if p.name in {f.name for f in text.glob("*.safetensors")}]
    assert language and all((text / p.name).stat().st_ino == p.stat().st_ino for p in language)  # linked


def test_tower_parameters_count_every_vision_tensor(tiny):
    from glm4_edge.convert.vision_export import checkpoint_tower_bytes, tower_parameters
    from glm4_edge.convert.vision_synthetic import (
        GLM4V_9B_LANGUAGE,
        GLM4V_9B_VISION,
        sized_config,
        vision_tensor_shapes,
    )

    config = json.loads((tiny / "config.json").read_text())
    shapes = [s for n, (s, _, _) in _tensors(tiny).items() if n.startswith("transformer.vision.")]
    assert tower_parameters(config) == sum(math.prod(s) for s in shapes)
    assert checkpoint_tower_bytes(config) == 4 * sum(math.prod(s) for s in shapes)  # the tiny one is float32
    full = sized_config({"model_type": "chatglm"}, GLM4V_9B_LANGUAGE, GLM4V_9B_VISION)
    table = vision_tensor_shapes(GLM4V_9B_VISION, GLM4V_9B_LANGUAGE.hidden_size, GLM4V_9B_LANGUAGE.intermediate_size)
    assert tower_parameters(full) == sum(math.prod(s) for s in table.values())
    assert 4.3e9 < tower_parameters(full) < 4.6e9  # GLM4V_FORMAT.md: ~13.9B in all, ~9.4B of them language


def test_resource_needs_counts_the_vision_tower_apart_from_the_language_model():
    """The vision stage (the tower traced in fp16 plus its INT8 copy) needs more RAM than the language stage
    of glm-4v-9b at int4; the estimate covers both stages, and the disk adds the vision IR."""
    from glm4_edge.convert.export import resource_needs
    from glm4_edge.convert.families import SourceInfo
    from glm4_edge.convert.vision_export import tower_ir_bytes, tower_parameters
    from glm4_edge.convert.vision_synthetic import (
        GLM4V_9B_LANGUAGE,
        GLM4V_9B_VISION,
        legacy_language_shapes,
        sized_config,
    )

    config = sized_config({"model_type": "chatglm"}, GLM4V_9B_LANGUAGE, GLM4V_9B_VISION)
    text_config = {k: v for k, v in config.items() if k != "vision_config"}
    language_bytes = 2 * sum(math.prod(s) for s in legacy_language_shapes(GLM4V_9B_LANGUAGE).values())
    tower = tower_parameters(config)
    source_bytes = language_bytes + 2 * tower
    vision = SourceInfo(Path("glm-4v-9b"), "chatglm", config, reasoning=False, vision=True)
    text = SourceInfo(Path("glm-4-9b-chat"), "chatglm", text_config, reasoning=False)
    for weight_format in ("int4", "int8", "fp16"):
        disk, ram = resource_needs(vision, source_bytes, weight_format, staged_copy=True)
        text_disk, text_ram = resource_needs(text, language_bytes, weight_format, staged_copy=True)
        traced = 2 * tower + (tower if weight_format != "fp16" else 0)  # fp16 weights, INT8 copy
        assert ram > traced and ram >= text_ram, weight_format
        assert disk > text_disk + tower_ir_bytes(config, weight_format), weight_format
