"""The NPU path run for real: the NPU plugin's NPUW layer, backed by the CPU (`NPUW_DEVICES=CPU`).

No NPU exists here, but the NPU plugin ships in the OpenVINO wheel and NPUW (what openvino-genai
compiles LLMs with on the NPU: static prefill and generate shapes, the stateful model made
stateless, the KV cache in its own buffers) can run its partitions on the CPU. These tests therefore
run the static-shape machinery an NPU deployment runs, text models through openvino-genai's NPU
pipeline and GLM-4V through glm4-edge's own loop; what they cannot catch is an op the NPU compiler
itself refuses. NPUW computes in f16, so logits are compared with the CPU's f32 ones against the
error of the CPU's own f16 inference.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import glm4_edge
from glm4_edge.fallback import StaticShapeError

from .conftest import CLI, _convert
from .test_vision import F32, picture

ON_CPU = {"NPUW_DEVICES": "CPU"}
F16 = {"INFERENCE_PRECISION_HINT": "f16"}
PROMPTS = ("hello", "Tell me about the river and the city.")


@pytest.fixture(scope="module")
def text_npu(workdir, tiny_glm4) -> Path:
    return _convert(tiny_glm4, workdir / "npuw-text", device="npu")


@pytest.fixture(scope="module")
def vision_npu(workdir, glm4v_checkpoint) -> Path:
    return _convert(glm4v_checkpoint, workdir / "npuw-glm4v", device="npu")


def relative_rms(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.sqrt(np.mean((got - expected) ** 2)) / np.sqrt(np.mean(expected ** 2)))


def test_text_model_on_the_npu_pipeline_answers_as_on_the_cpu(text_npu):
    npu = glm4_edge.load(text_npu, "NPU", properties=ON_CPU)
    cpu = glm4_edge.load(text_npu, "CPU")
    assert (npu.static_shape.max_prompt_len, npu.static_shape.min_response_len) == (1024, 256)  # the manifest's
    for prompt in PROMPTS:
        expected = cpu.generate(prompt, max_new_tokens=12, temperature=0, ignore_eos=True)
        got = npu.generate(prompt, max_new_tokens=12, temperature=0, ignore_eos=True)
        assert got.text == expected.text and got.stats.generated_tokens == 12
        assert got.stats.device == "NPU" and got.stats.fallback is None


def test_text_model_over_the_static_shape_falls_back_or_says_why(text_npu):
    long_prompt = "river city " * 60
    strict = glm4_edge.load(text_npu, "NPU", max_prompt_len=64, min_response_len=64, properties=ON_CPU,
                            fallback_device="none")
    with pytest.raises(StaticShapeError, match="over MAX_PROMPT_LEN 64"):
        strict.generate(long_prompt, max_new_tokens=4)
    relaxed = glm4_edge.load(text_npu, "NPU", max_prompt_len=64, min_response_len=64, properties=ON_CPU)
    reply = relaxed.generate(long_prompt, max_new_tokens=6, temperature=0, ignore_eos=True)
    expected = glm4_edge.load(text_npu, "CPU").generate(long_prompt, max_new_tokens=6, temperature=0, ignore_eos=True)
    assert reply.stats.device == "CPU" and "MAX_PROMPT_LEN 64" in reply.stats.fallback
    assert reply.text == expected.text


@pytest.mark.parametrize(("lengths", "words"), [
    (dict(max_prompt_len=100_000), "over the model's context of 4096"),  # a static KV cache that size is all RAM
    (dict(max_prompt_len=-5), "--max-prompt-len -5"),
    (dict(min_response_len=0), "--min-response-len 0"),  # 0 used to mean "the default" silently
])
def test_static_shape_lengths_are_checked_before_loading(text_npu, vision_npu, lengths, words):
    from glm4_edge.errors import BadParameterError

    for folder in (text_npu, vision_npu):
        with pytest.raises(BadParameterError, match=words):
            glm4_edge.load(folder, "NPU", properties=ON_CPU, **lengths)


def test_cli_names_a_bad_static_shape_and_info_shows_it(text_npu, vision_npu):
    bad = subprocess.run([*CLI, "generate", str(text_npu), "--device", "npu", "--property", "NPUW_DEVICES=CPU",
                          "--max-prompt-len", "100000", "-p", "hi"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "context" in bad.stderr
    info = subprocess.run([*CLI, "info", str(vision_npu)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})  # rich wraps table cells at 80 columns
    assert "MAX_PROMPT_LEN 1024, MIN_RESPONSE_LEN 256" in info.stdout and "int8 symmetric" in info.stdout


def test_without_npuw_on_cpu_the_npu_is_still_a_clear_error(text_npu):
    from glm4_edge.errors import DeviceError

    with pytest.raises(DeviceError, match="device NPU not found"):
        glm4_edge.load(text_npu, "NPU")


def test_glm4v_conversion_for_the_npu_is_symmetric_and_sized_for_an_image(vision_npu, glm4v_checkpoint, tmp_path):
    import openvino as ov
    from glm4_edge.convert.export import ConvertOptions, convert

    from glm4_edge import images
    from glm4_edge.manifest import read_manifest

    manifest = read_manifest(vision_npu)
    assert manifest.target_device == "npu" and manifest.compression.sym is True
    assert manifest.npu == {"max_prompt_len": 1024, "min_response_len": 256}  # 18 image tokens fit the default
    encoder = ov.Core().read_model(vision_npu / images.VISION_ENCODER_XML)
    weights = {op.get_element_type().get_type_name() for op in encoder.get_ops()
               if op.get_type_name() == "Constant" and op.get_element_type() in (ov.Type.i8, ov.Type.u8)}
    assert weights == {"i8"}  # INT8_SYM: signed, no zero points (CPU conversions store u8 with zero points)
    small = convert(ConvertOptions(source=str(glm4v_checkpoint), output=tmp_path / "small", device="npu",
                                   npu_max_prompt_len=16))
    assert small.manifest.npu["max_prompt_len"] == 512  # 18 image tokens + 256 for text, in blocks of 256
    assert any("MAX_PROMPT_LEN 16 -> 512" in note for note in small.notes)


def test_glm4v_on_the_npu_matches_the_cpu_within_f16_error(vision_npu):
    from .test_vision import prompt_ids

    image = picture(3)
    npu = glm4_edge.load(vision_npu, "NPU", properties=ON_CPU)
    assert npu.static_shape is not None and npu.static_shape.max_prompt_len == 1024
    logits = {}
    for name, model in (("npu", npu), ("f32", glm4_edge.load(vision_npu, "CPU", properties=F32)),
                        ("f16", glm4_edge.load(vision_npu, "CPU", properties=F16))):
        reply = model.generate("What is in this picture?", image=image, max_new_tokens=3, temperature=0,
                               ignore_eos=True)
        assert reply.stats.generated_tokens == 3 and reply.stats.vision_encoder_s is not None
        logits[name] = model.last_prefill_logits.copy()
    f16_error = relative_rms(logits["f16"], logits["f32"])
    npu_error = relative_rms(logits["npu"], logits["f32"])
    assert npu_error < 2 * f16_error + 0.005, (npu_error, f16_error)

    # The tolerance is tight enough to see a position fault: image tokens placed one position each
    # (not sharing one, as the reference does) move the logits far more than f16 does.
    cpu = glm4_edge.load(vision_npu, "CPU", properties=F32)
    ids, opened = prompt_ids(cpu, "What is in this picture?", image)
    embeds, _, _ = cpu.prompt_inputs(ids, opened)
    cpu.reset()
    wrong = cpu.forward(embeds, np.arange(embeds.shape[1]), embeds.shape[1])[-1]
    assert relative_rms(wrong, logits["f32"]) > 4 * npu_error


def test_glm4v_on_the_npu_decodes_after_an_image_as_the_cpu(vision_npu):
    """NPUW's generate step takes a token's position id for its KV slot; GLM-4V's image tokens share one
    position, so without the offset (`vision.npu_position_offset`) the cache lost the image's tokens at the
    first generated token and the answer went astray from its second token."""
    from PIL import Image

    npu = glm4_edge.load(vision_npu, "NPU", properties=ON_CPU)
    cpu = glm4_edge.load(vision_npu, "CPU", properties=F32)
    for seed in (0, 1):  # two images whose 10 greedy tokens are clear of f16 ties on this tiny model
        image = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (60, 90, 3), dtype=np.uint8))
        answers = [model.generate("What is in this picture?", image=image, max_new_tokens=10, temperature=0,
                                  ignore_eos=True) for model in (cpu, npu)]
        assert answers[0].text == answers[1].text and answers[1].stats.generated_tokens == 10


def test_glm4v_on_the_npu_takes_image_and_text_requests_in_any_order(vision_npu):
    """NPUW takes a multi-token call for a prefill only when it starts at the first position id the request
    ever saw; image prompts start elsewhere (the offset above), so one loaded model used to fail every
    request of the other kind after its first (found by the second new-user trial)."""
    from PIL import Image

    npu = glm4_edge.load(vision_npu, "NPU", properties=ON_CPU)
    cpu = glm4_edge.load(vision_npu, "CPU", properties=F32)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8))
    for kind in ("text", "image", "image", "text", "text", "image"):
        extra = {"image": image} if kind == "image" else {}
        replies = [model.generate("What is in this picture?" if extra else "hello", max_new_tokens=6,
                                  temperature=0, ignore_eos=True, **extra) for model in (cpu, npu)]
        assert replies[1].stats.generated_tokens == 6 and replies[1].stats.device == "NPU"
        assert relative_rms(npu.last_prefill_logits, cpu.last_prefill_logits) < 0.1, kind


def test_glm4v_on_the_npu_prefills_each_turn_whole_and_refuses_what_does_not_fit(vision_npu):
    from glm4_edge.options import GenerationOptions

    from .test_vision import prompt_ids

    npu = glm4_edge.load(vision_npu, "NPU", properties=ON_CPU)
    cpu = glm4_edge.load(vision_npu, "CPU", properties=F32)
    options = GenerationOptions(max_new_tokens=4, temperature=0, ignore_eos=True)
    ids, image = prompt_ids(npu, "Describe it.", picture(4))
    list(npu._checked(ids, image, options, [], None, True))
    follow = npu._cached[0] + npu.encode("<|user|>\nAnd the colours?<|assistant|>")  # extends what was fed
    reply = list(npu._checked(follow, image, options, [], None, True))
    assert npu.last_prefill_tokens == reply[-1].stats.prompt_tokens == len(follow) - 3 + 18  # NPUW: all again
    assert reply[-1].stats.vision_encoder_s is None  # the image's features came from the cache
    cpu.reset()
    list(cpu._checked(follow, image, options, [], None, True))
    assert relative_rms(npu.last_prefill_logits, cpu.last_prefill_logits) < 0.1

    tight = glm4_edge.load(vision_npu, "NPU", max_prompt_len=32, min_response_len=64, properties=ON_CPU)
    with pytest.raises(StaticShapeError, match="over MAX_PROMPT_LEN 32") as refused:
        tight.generate("What is in this picture?", image=image, max_new_tokens=4)
    assert "--fallback-device" not in str(refused.value)  # GLM-4V has no fallback pipeline: not offered
    assert tight.generate("hi", max_new_tokens=2, temperature=0).stats.generated_tokens == 2


def test_cli_runs_glm4v_on_the_npu_path(vision_npu, tmp_path):
    path = tmp_path / "picture.png"
    picture(5).save(path)
    ok = subprocess.run([*CLI, "generate", str(vision_npu), "--device", "npu", "--property", "NPUW_DEVICES=CPU",
                         "--image", str(path), "-p", "What is this?", "--max-new-tokens", "4", "--json"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert '"device": "NPU"' in ok.stdout
    missing = subprocess.run([*CLI, "generate", str(vision_npu), "--device", "npu", "--image", str(path), "-p", "x"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and len(missing.stderr.strip().splitlines()) == 1
    assert "NPU not found" in missing.stderr
