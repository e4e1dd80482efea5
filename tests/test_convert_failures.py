"""Channels the group size does not divide, and failures deep in the conversion stack: adapted and said,
or one line, a non-zero exit and nothing written (issue 12, item 6)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

from glm4_edge.manifest import read_manifest

from .test_convert import assert_one_line_error, run_cli, stream_raw


@pytest.fixture(scope="module")
def hidden_96(workdir) -> Path:
    """Hidden size 96 and MLP size 192: group size 128 divides neither (attention output stays 128)."""
    from glm4_edge.convert.synthetic import Shape, build_checkpoint

    return build_checkpoint(workdir / "tiny-hidden-96", "glm4", shape=Shape(96, 192, 2, 4, 2, 32))


def int4_weight_shapes(folder: Path) -> set[tuple[int, ...]]:
    """Shapes of the INT4 weight constants: (out, in) channel-wise, (out, groups, group size) grouped."""
    model = ov.Core().read_model(folder / "openvino_model.xml")
    return {tuple(op.get_output_partial_shape(0).to_shape()) for op in model.get_ops()
            if op.get_type_name() == "Constant" and op.get_output_element_type(0).get_type_name() in ("i4", "u4")}


def test_npu_preset_goes_channel_wise_when_group_128_does_not_divide(workdir, hidden_96):
    out = workdir / "h96-npu"
    result = run_cli("convert", str(hidden_96), "-o", str(out), "--device", "npu")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "channel-wise" in result.stderr and "hidden size 96" in result.stderr  # said in the summary
    shapes = int4_weight_shapes(out)
    assert shapes and all(len(shape) == 2 for shape in shapes), shapes
    manifest = read_manifest(out)
    assert manifest.compression.group_size == -1 and manifest.compression.sym
    assert manifest.compression.bits_table[0]["precision"] == "int4_sym"
    assert stream_raw(out)


def test_gpu_preset_adapts_the_group_size_of_the_layers_it_does_not_divide(workdir, hidden_96):
    out = workdir / "h96-gpu"
    # Group 128 asked for explicitly (the gpu preset's own group, 32, divides 96 and 192), every layer INT4.
    result = run_cli("convert", str(hidden_96), "-o", str(out), "--device", "gpu", "--group-size", "128",
                     "--ratio", "1")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    summary = " ".join(result.stderr.split())
    assert "hidden size (96): those layers use group size 32" in summary
    assert "MLP intermediate size (192): those layers use group size 64" in summary
    shapes = int4_weight_shapes(out)
    assert (128, 3, 32) in shapes  # q_proj: 128 outputs over 96 inputs in 3 groups of 32
    assert any(shape[1:] == (3, 64) for shape in shapes)  # down_proj: 192 inputs in 3 groups of 64
    assert any(shape[1:] == (1, 128) for shape in shapes)  # o_proj: 128 inputs keep group 128
    assert read_manifest(out).compression.group_size == 128
    assert stream_raw(out)


@pytest.fixture(scope="module")
def broken_sources(workdir, tiny_glm4) -> dict[str, Path]:
    root = workdir / "stack-failures"
    root.mkdir()
    truncated = root / "truncated-shard"
    shutil.copytree(tiny_glm4, truncated)
    shard = truncated / "model.safetensors"
    with shard.open("r+b") as handle:
        handle.truncate(shard.stat().st_size // 2)
    garbage = root / "garbage-header"
    shutil.copytree(tiny_glm4, garbage)
    with (garbage / "model.safetensors").open("r+b") as handle:
        handle.write(np.full(64, 0xFF, dtype=np.uint8).tobytes())
    bad_act = root / "unknown-activation"  # passes every check of ours; transformers raises inside optimum
    shutil.copytree(tiny_glm4, bad_act)
    config = json.loads((bad_act / "config.json").read_text())
    (bad_act / "config.json").write_text(json.dumps({**config, "hidden_act": "no_such_activation"}))
    return {"truncated": truncated, "garbage": garbage, "bad_act": bad_act}


@pytest.mark.parametrize("case,words", [
    ("truncated", ["model.safetensors", "download it again"]),
    ("garbage", ["model.safetensors", "download it again"]),
    ("bad_act", ["conversion failed while exporting to OpenVINO IR", "no_such_activation"]),
])
def test_failure_inside_the_stack_is_one_line_and_writes_nothing(workdir, broken_sources, case, words):
    parent = workdir / f"stack-out-{case}"
    out = parent / "nested" / "model"
    result = run_cli("convert", str(broken_sources[case]), "-o", str(out), "--quiet")
    assert_one_line_error(result, *words)
    assert not parent.exists()  # not even the parent folders made for the output
    assert not list(workdir.glob(f".stack-out-{case}*"))
