"""`glm4-edge convert`: every family and format, accuracy against PyTorch, presets, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import openvino as ov
import openvino_genai
import pytest

from glm4_edge.manifest import MANIFEST_NAME, read_manifest

from .conftest import CLI, _convert

TEXTS = ["Hello! What is 23+45?", "你好，今天北京的天气怎么样？", "def add(a, b):\n    return a + b"]


def ov_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    """Prefill logits of the stateful IR, straight through OpenVINO."""
    compiled = ov.Core().compile_model(model_dir / "openvino_model.xml", "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    names = {port.get_any_name() for port in compiled.inputs}
    inputs = {"input_ids": np.array([ids], dtype=np.int64),
              "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
    if "position_ids" in names:
        inputs["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
    if "beam_idx" in names:
        inputs["beam_idx"] = np.zeros((1,), dtype=np.int32)
    request.reset_state()
    return request.infer(inputs)["logits"][0]


def torch_logits(checkpoint: Path, ids: list[int], adapter: Path | None = None) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def hf_ids(checkpoint: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint)(text, add_special_tokens=False)["input_ids"]


def run_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def stream_raw(model_dir: Path, prompt: str = "[gMASK]<sop><|user|>\nhi<|assistant|>", tokens: int = 8) -> str:
    """What a user of raw openvino-genai gets from the folder, with no glm4-edge code involved."""
    pipe = openvino_genai.LLMPipeline(str(model_dir), "CPU")
    pieces = []

    def collect(text: str):
        pieces.append(text)
        return openvino_genai.StreamingStatus.RUNNING

    config = pipe.get_generation_config()
    config.max_new_tokens = tokens
    config.ignore_eos = True
    pipe.generate(prompt, config, collect)
    assert len(pieces) >= 2
    return "".join(pieces)


@pytest.fixture(scope="module")
def sources(tiny_glm4, tiny_glm, tiny_chatglm):
    return {"glm4": tiny_glm4, "glm": tiny_glm, "chatglm": tiny_chatglm}


@pytest.fixture(scope="module")
def converted(workdir, sources):
    cache: dict[tuple[str, str], Path] = {}

    def get(family: str, weight_format: str) -> Path:
        key = (family, weight_format)
        if key not in cache:
            cache[key] = _convert(sources[family], workdir / f"conv-{family}-{weight_format}",
                                  weight_format=weight_format)
        return cache[key]

    return get


@pytest.mark.parametrize("weight_format", ["int4", "int8", "fp16"])
@pytest.mark.parametrize("family", ["glm4", "glm", "chatglm"])
def test_every_family_and_format_streams_from_raw_genai(converted, family, weight_format):
    folder = converted(family, weight_format)
    for name in ("openvino_model.xml", "openvino_tokenizer.xml", "openvino_detokenizer.xml",
                 "chat_template.jinja", "generation_config.json", MANIFEST_NAME):
        assert (folder / name).is_file(), name
    manifest = read_manifest(folder)
    assert manifest.family == family
    assert manifest.compression.weight_format == weight_format
    from glm4_edge.convert.presets import PRESETS

    int4 = "int4_sym" if PRESETS["cpu"].sym else "int4_asym"
    expected = {"int4": int4, "int8": "int8_asym", "fp16": "fp16"}[weight_format]  # the CPU preset
    assert manifest.compression.bits_table[0]["precision"] == expected
    assert stream_raw(folder)


@pytest.mark.parametrize("family", ["glm4", "glm"])
def test_fp16_logits_match_pytorch(converted, sources, family):
    ids = hf_ids(sources[family], TEXTS[0] + TEXTS[1])
    reference = torch_logits(sources[family], ids)
    got = ov_logits(converted(family, "fp16"), ids)
    assert np.abs(got - reference).max() < 0.05 * np.abs(reference).max()
    assert (got.argmax(-1) == reference.argmax(-1)).mean() > 0.95


@pytest.mark.parametrize("family, weight_format", [("glm4", "fp16"), ("glm4", "int4"), ("glm", "int8"),
                                                   ("chatglm", "int4")])
def test_rope_frequencies_stay_f32(converted, sources, family, weight_format):
    """optimum's fp16 export rounds inv_freq to f16, an angle error that grows with position (convert/rope.py):
    every format's IR carries transformers' exact f32 values instead, and no f16 copy of them is left."""
    from glm4_edge.convert import rope

    source = sources["glm" if family == "chatglm" else family]
    inv_freq = rope.reference_inv_freq(source)
    model = ov.Core().read_model(converted(family, weight_format) / "openvino_model.xml")
    found = {"f32": 0, "f16": 0}
    for node in model.get_ordered_ops():
        if node.get_type_name() == "Constant" and int(np.prod(list(node.get_output_shape(0)))) == inv_freq.size:
            data = node.get_data().ravel()
            if data.dtype == np.float32 and np.array_equal(data, inv_freq):
                found["f32"] += 1
            elif data.dtype == np.float16 and np.array_equal(data, inv_freq.astype(np.float16)):
                found["f16"] += 1
    assert found == {"f32": 1, "f16": 0}


def test_fp16_logits_match_pytorch_far_into_the_context(converted, sources):
    """Positions up to 1024: with f16 RoPE frequencies the logits drift from PyTorch as positions grow."""
    rng = np.random.default_rng(7)
    config = json.loads((sources["glm4"] / "config.json").read_text())
    ids = rng.integers(0, config["vocab_size"], 1024).tolist()
    reference = torch_logits(sources["glm4"], ids)
    got = ov_logits(converted("glm4", "fp16"), ids)
    rmse = np.sqrt(np.mean((got - reference) ** 2)) / np.sqrt(np.mean(reference ** 2))
    assert rmse < 1e-3, rmse


def test_legacy_chatglm_matches_the_glm_model_it_was_written_from(converted, sources):
    """The legacy layout is remapped without remote code: same logits and same tokens as the original."""
    folder = converted("chatglm", "fp16")
    tokenizer = openvino_genai.Tokenizer(str(folder))
    for text in TEXTS:
        ids = list(tokenizer.encode(text, add_special_tokens=False).input_ids.data[0])
        assert ids == hf_ids(sources["glm"], text), text
    ids = hf_ids(sources["glm"], "".join(TEXTS))
    reference = torch_logits(sources["glm"], ids)
    got = ov_logits(folder, ids)
    assert np.abs(got - reference).max() < 0.05 * np.abs(reference).max()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "glm"


def test_int4_stays_close_to_fp16(converted, sources):
    ids = hf_ids(sources["glm4"], TEXTS[0])
    fp16 = ov_logits(converted("glm4", "fp16"), ids)
    int4 = ov_logits(converted("glm4", "int4"), ids)
    correlation = np.corrcoef(fp16.ravel(), int4.ravel())[0, 1]
    assert correlation > 0.9


def weight_precisions(folder: Path) -> set[str]:
    model = ov.Core().read_model(folder / "openvino_model.xml")
    kinds = set()
    for op in model.get_ops():
        if op.get_type_name() != "Constant":
            continue
        shape = list(op.get_output_partial_shape(0).to_shape())
        if len(shape) >= 2 and shape[-1] != 1 and np.prod(shape) >= 4096:
            kinds.add(op.get_output_element_type(0).get_type_name())
    return kinds


def test_npu_preset_is_symmetric_int4_only(workdir, tiny_glm4):
    folder = _convert(tiny_glm4, workdir / "npu-int4", device="npu")
    kinds = weight_precisions(folder)
    assert "i4" in kinds
    assert not kinds & {"u4", "u8", "i8", "f16", "f32", "bf16"}, kinds
    manifest = read_manifest(folder)
    assert manifest.target_device == "npu" and manifest.compression.sym is True
    assert manifest.npu == {"max_prompt_len": 1024, "min_response_len": 256}


def test_int4_modes_gptq_and_sensitivity_settings():
    """NF4/CB4, GPTQ and the ratio's sensitivity metric (benchmarks/quality_sweep.py): which need calibration
    data, and the settings refused with a one-line reason."""
    from glm4_edge.convert import presets

    from glm4_edge.errors import BadParameterError

    nf4 = presets.resolve("cpu", int4_mode="nf4", group_size=64)
    assert (nf4.int4_mode, nf4.group_size, nf4.data_aware) == ("nf4", 64, False)
    assert presets.describe(nf4).startswith("int4 nf4 group 64")
    for data_aware in (dict(gptq=True), dict(sensitivity_metric="hessian_input_activation", ratio=0.9)):
        settings = presets.resolve("cpu", **data_aware)
        assert settings.data_aware and settings.dataset == "builtin", data_aware
    free = presets.resolve("cpu", sensitivity_metric="weight_quantization_error")
    assert not free.data_aware and free.dataset is None
    for device, kwargs, knob in (("cpu", dict(int4_mode="nf5"), "int4_mode"),
                                 ("cpu", dict(sensitivity_metric="loss"), "sensitivity_metric"),
                                 ("npu", dict(int4_mode="nf4"), "int4_mode"),
                                 ("cpu", dict(weight_format="int8", int4_mode="nf4"), "int4_mode")):
        with pytest.raises(BadParameterError) as caught:
            presets.resolve(device, **kwargs)
        assert caught.value.param == knob and "\n" not in str(caught.value)


def test_manifest_is_complete(converted):
    manifest = read_manifest(converted("glm4", "int4"))
    assert manifest.source["id"] and manifest.source["content_hash"].startswith("sha256:")
    c = manifest.compression
    from glm4_edge.convert.presets import PRESETS

    cpu = PRESETS["cpu"]
    assert (c.group_size, c.ratio, c.sym, c.all_layers, c.backup_precision) == (
        cpu.group_size, cpu.ratio, cpu.sym, cpu.all_layers, cpu.backup_precision)
    assert manifest.preset == "cpu"
    assert c.weight_error["matrices"] == 14 and c.weight_error["quality_class"] != "coarser than Q4_0"
    assert c.bits_table and abs(sum(row["percent"] for row in c.bits_table) - 100) < 0.1
    assert manifest.stop_token_ids and len(manifest.stop_token_ids) == 3
    assert manifest.generation_prefix == "<|assistant|>"
    for package in ("openvino", "openvino-genai", "nncf", "optimum-intel", "transformers"):
        assert manifest.versions[package]
    assert manifest.created and manifest.size_bytes["output"] < manifest.size_bytes["source"]
    generation = json.loads((converted("glm4", "int4") / "generation_config.json").read_text())
    assert sorted(generation["eos_token_id"]) == sorted(manifest.stop_token_ids)


def test_z1_template_opens_reasoning(workdir):
    from glm4_edge.convert.synthetic import build_checkpoint

    source = build_checkpoint(workdir / "GLM-Z1-tiny", "glm4", reasoning=True)
    manifest = read_manifest(_convert(source, workdir / "z1-fp16", weight_format="fp16"))
    assert manifest.reasoning and manifest.generation_prefix == "<|assistant|>\n<think>"


def test_awq_and_scale_estimation_work_offline(workdir, tiny_glm4):
    folder = _convert(tiny_glm4, workdir / "awq-int4", awq=True, scale_estimation=True)
    manifest = read_manifest(folder)
    assert manifest.compression.awq and manifest.compression.scale_estimation
    assert manifest.compression.dataset == "builtin"
    assert stream_raw(folder)


def test_user_calibration_file(workdir, tiny_glm4):
    data = workdir / "calib.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"What is {i}+{i}? It is {2 * i}."}) for i in range(8)))
    folder = _convert(tiny_glm4, workdir / "se-int4", scale_estimation=True, dataset=str(data))
    assert read_manifest(folder).compression.dataset == str(data)


def test_context_writes_yarn(workdir, tiny_glm4, converted):
    folder = _convert(tiny_glm4, workdir / "yarn-fp16", weight_format="fp16", context=65536)
    rope = json.loads((folder / "config.json").read_text())["rope_parameters"]
    assert rope["rope_type"] == "yarn" and rope["factor"] == 16.0  # over the checkpoint's own 4096
    assert rope["original_max_position_embeddings"] == 4096
    manifest = read_manifest(folder)
    assert manifest.context_length == 65536 and manifest.rope_scaling["factor"] == 16.0
    ids = hf_ids(tiny_glm4, TEXTS[0])
    plain = ov_logits(converted("glm4", "fp16"), ids)
    assert np.abs(ov_logits(folder, ids) - plain).max() > 1e-3  # the scaling is baked into the IR
    assert stream_raw(folder)
    source_config = json.loads((tiny_glm4 / "config.json").read_text())
    assert "rope_scaling" not in source_config  # the user's checkpoint is never edited


def test_lora_adapter_is_merged(workdir, tiny_glm4):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_glm4, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj",
                                                                                    "down_proj"]))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.2)
    adapter = workdir / "lora"
    peft_model.save_pretrained(adapter)
    folder = _convert(tiny_glm4, workdir / "lora-fp16", weight_format="fp16", adapter=adapter)
    ids = hf_ids(tiny_glm4, TEXTS[0])
    reference = torch_logits(tiny_glm4, ids, adapter=adapter)
    without = torch_logits(tiny_glm4, ids)
    got = ov_logits(folder, ids)
    assert np.abs(got - reference).max() < 0.05 * np.abs(reference).max()
    assert np.abs(got - without).max() > 0.2 * np.abs(reference).max()  # the adapter did change the model
    assert read_manifest(folder).source["adapter"] == str(adapter)


# --- bad input: one line, exit 2, nothing written -------------------------------------------------

def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def bad_sources(workdir, tiny_glm4):
    import shutil

    root = workdir / "bad"
    root.mkdir()
    llama = root / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    broken = root / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    no_tokenizer = root / "no-tokenizer"
    shutil.copytree(tiny_glm4, no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    vision = root / "glm4v"
    vision.mkdir()
    (vision / "config.json").write_text(json.dumps({"model_type": "glm4v", "vision_config": {}}))
    a_file = root / "a-file"
    a_file.write_text("x")
    # A checkpoint that claims 8 TiB of weights (a sparse file; ext4 allows up to 16): no disk here holds its
    # conversion.
    huge = root / "huge"
    shutil.copytree(tiny_glm4, huge)
    with open(huge / "model-huge.safetensors", "wb") as handle:
        handle.truncate(2**43)
    return {"llama": llama, "broken": broken, "no_tokenizer": no_tokenizer, "vision": vision, "file": a_file,
            "huge": huge}


@pytest.mark.parametrize("case,extra,words", [
    ("missing", [], ["no such folder"]),
    ("llama", [], ["not a GLM-4 checkpoint", "llama"]),
    ("broken", [], ["not valid JSON"]),
    ("no_tokenizer", [], ["tokenizer.json"]),
    ("vision", [], ["GLM-4.1V"]),
    ("good", ["--device", "npu", "--no-sym"], ["symmetric"]),
    ("good", ["--weight-format", "fp16", "--group-size", "64"], ["--group-size"]),
    ("good", ["--weight-format", "int8", "--ratio", "0.5"], ["--ratio"]),
    ("good", ["--ratio", "1.5"], ["--ratio"]),
    ("good", ["--fast", "--weight-format", "int8"], ["--fast"]),
    ("good", ["--fast", "--device", "npu"], ["--fast", "NPU"]),
    ("good", ["--context", "100"], ["--context"]),
    ("good", ["--dataset", "/nonexistent.jsonl", "--awq"], ["--dataset"]),
    ("good", ["--adapter", "/nonexistent-adapter"], ["--adapter"]),
    ("good", ["--weight-format", "int3"], ["int3"]),
    ("hub", [], ["HF_HUB_OFFLINE", "hf download"]),
    ("unwritable", [], ["is a file"]),
    ("huge", [], ["not enough disk", "--no-resource-check"]),
])
def test_bad_input_is_one_line_and_exit_2(workdir, tiny_glm4, bad_sources, case, extra, words):
    out = workdir / f"bad-out-{case}-{len(extra)}"
    source = {"missing": str(workdir / "nope"), "good": str(tiny_glm4), "hub": "THUDM/glm-4-9b-chat",
              "unwritable": str(tiny_glm4)}.get(case) or str(bad_sources[case])
    if case == "unwritable":
        out = bad_sources["file"] / "out"
    result = run_cli("convert", source, "-o", str(out), *extra, env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(result, *words)
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*")) if out.parent.is_dir() else True


def test_existing_output_is_kept(workdir, tiny_glm4, bad_sources):
    out = workdir / "kept"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    result = run_cli("convert", str(tiny_glm4), "-o", str(out))
    assert_one_line_error(result, "--force")
    # --force with a source that fails: the old output must survive
    result = run_cli("convert", str(bad_sources["broken"]), "-o", str(out), "--force")
    assert result.returncode == 2
    assert (out / "precious.txt").read_text() == "mine"


def test_force_replaces_only_after_success(workdir, tiny_glm4):
    out = workdir / "replaced"
    out.mkdir()
    (out / "old.txt").write_text("old")
    result = run_cli("convert", str(tiny_glm4), "-o", str(out), "--force", "--weight-format", "fp16", "--quiet")
    assert result.returncode == 0, result.stderr
    assert not (out / "old.txt").exists() and (out / MANIFEST_NAME).is_file()
    assert not list(workdir.glob(".replaced.*"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_conversion_leaves_nothing(workdir, tiny_glm4, sig):
    out = workdir / f"interrupted-{sig.name}"
    process = subprocess.Popen([*CLI, "convert", str(tiny_glm4), "-o", str(out), "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(workdir.glob(f".{out.name}.tmp-*/_source")):
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()
    time.sleep(0.5)  # into the export
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "Traceback" not in stderr
    assert not out.exists()
    assert not list(workdir.glob(f".{out.name}.*"))


def test_convert_cli_prints_summary(workdir, tiny_glm4):
    out = workdir / "cli-int4"
    result = run_cli("convert", str(tiny_glm4), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "int4_" in result.stderr and "peak memory" in result.stderr
    assert "quality: " in result.stderr and "Q4_0" in result.stderr  # rich wraps the rest of the line
    assert "INFO:nncf" not in result.stderr and "No CUDA runtime" not in result.stderr  # library chatter
    assert (out / MANIFEST_NAME).is_file()
    info = run_cli("info", str(out), "--json")
    assert json.loads(info.stdout)["family"] == "glm4"
    assert json.loads(info.stdout)["compression"]["weight_error"]["quality_class"]
    info_table = run_cli("info", str(out)).stdout
    assert "quality" in info_table and "Q4_0" in info_table


def test_runtime_package_does_not_import_torch():
    code = "import sys, glm4_edge, glm4_edge.cli.main as m; m.build_parser(); " \
           "print(sorted(k for k in sys.modules if k.split('.')[0] in ('torch','transformers','optimum','nncf')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
