"""`glm4-edge export-ovms`: the repository OpenVINO Model Server reads, checked against its documented schema.

No OVMS binary is reachable here. The generated graph.pbtxt is parsed and checked against the fields
and types of LLMCalculatorOptions in openvinotoolkit/model_server src/llm/llm_calculator.proto (commit
06fa25b33c5cf77354a4caad05a02c77acf87288) and the node layout of docs/llm/reference.md ("Every node
based on LLM Calculator MUST have exactly that specification of this side packet"); the model folder
is then loaded the way OVMS's continuous-batching servable does (GenAI with a SchedulerConfig built
from the graph's options and plugin_config) and answers two prompts together with real inference.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from .conftest import CLI, REPO
from .pbtxt import Ident, get, parse

# llm_calculator.proto @ 06fa25b: field -> type ("enum" values listed separately).
LLM_CALCULATOR_FIELDS = {
    "models_path": "string", "max_num_batched_tokens": "uint64", "cache_size": "uint64", "max_num_seqs": "uint64",
    "dynamic_split_fuse": "bool", "device": "string", "plugin_config": "string", "best_of_limit": "uint32",
    "max_tokens_limit": "uint32", "enable_prefix_caching": "bool", "draft_models_path": "string",
    "draft_device": "string", "draft_max_num_batched_tokens": "uint64", "draft_cache_size": "uint64",
    "draft_block_size": "uint64", "draft_max_num_seqs": "uint64", "draft_dynamic_split_fuse": "bool",
    "draft_eagle3_mode": "bool", "pipeline_type": "enum", "cache_eviction_config": "message",
    "tool_parser": "string", "reasoning_parser": "string", "enable_tool_guided_generation": "bool",
    "sparse_attention_config": "message", "cache_interval_multiplier": "uint64", "chat_template_mode": "enum",
    "generation_config_path": "string",
}
REQUIRED_FIELDS = {"models_path"}
OPTIONS_EXTENSION = "[type.googleapis.com/mediapipe.LLMCalculatorOptions]"
# mediapipe CalculatorGraphConfig / Node fields the reference graph uses.
GRAPH_FIELDS = {"input_stream", "output_stream", "node"}
NODE_FIELDS = {"name", "calculator", "input_stream", "output_stream", "input_side_packet", "input_stream_info",
               "node_options", "input_stream_handler"}


def check_types(options: list) -> dict:
    seen = {}
    for key, value in options:
        assert key in LLM_CALCULATOR_FIELDS, f"{key} is not an LLMCalculatorOptions field"
        assert key not in seen, f"{key} repeated (optional fields are singular)"
        kind = LLM_CALCULATOR_FIELDS[key]
        if kind == "string":
            assert isinstance(value, str) and not isinstance(value, Ident), key
        elif kind in ("uint64", "uint32"):
            assert isinstance(value, int) and not isinstance(value, bool) and value >= 0, key
        elif kind == "bool":
            assert isinstance(value, bool), key
        seen[key] = value
    assert REQUIRED_FIELDS <= seen.keys()
    return seen


def check_repository(repo, name) -> dict:
    """Everything OVMS reads, checked; returns the LLMCalculatorOptions."""
    config = json.loads((repo / "config.json").read_text())
    assert set(config) <= {"model_config_list", "mediapipe_config_list", "monitoring"}
    assert {"name": name, "base_path": name} in config["mediapipe_config_list"]
    graph = parse((repo / name / "graph.pbtxt").read_text())
    assert {key for key, _ in graph} <= GRAPH_FIELDS
    assert get(graph, "input_stream") == ["HTTP_REQUEST_PAYLOAD:input"]
    assert get(graph, "output_stream") == ["HTTP_RESPONSE_PAYLOAD:output"]
    [node] = get(graph, "node")
    assert {key for key, _ in node} <= NODE_FIELDS
    assert get(node, "calculator") == ["HttpLLMCalculator"]
    assert get(node, "input_side_packet") == ["LLM_NODE_RESOURCES:llm"]
    assert sorted(get(node, "input_stream")) == ["HTTP_REQUEST_PAYLOAD:input", "LOOPBACK:loopback"]
    assert sorted(get(node, "output_stream")) == ["HTTP_RESPONSE_PAYLOAD:output", "LOOPBACK:loopback"]
    [info] = get(node, "input_stream_info")
    assert dict(info) == {"tag_index": "LOOPBACK:0", "back_edge": True}
    [handler] = get(node, "input_stream_handler")
    assert get(handler, "input_stream_handler") == ["SyncSetInputStreamHandler"]
    [node_options] = get(node, "node_options")
    [options] = get(node_options, OPTIONS_EXTENSION)
    seen = check_types(options)
    models = repo / name / seen["models_path"]
    for file in ("openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_detokenizer.xml",
                 "chat_template.jinja"):
        assert (models / file).is_file(), file
    json.loads(seen["plugin_config"])
    return seen


def export(*args, check=True):
    done = subprocess.run([*CLI, "export-ovms", *map(str, args)], cwd=REPO, capture_output=True, text=True)
    assert "Traceback" not in done.stderr, done.stderr
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_repository_matches_the_schema_and_serves_two_prompts_together(scripted_model, tmp_path):
    import openvino_genai

    repo = tmp_path / "repo"
    done = export(scripted_model, "-o", repo, "--name", "glm", "--cache-size", "1", "--max-num-seqs", "8",
                  "--property", "INFERENCE_NUM_THREADS=2", "--json")
    options = check_repository(repo, "glm")
    assert json.loads(done.stdout)["options"] == options
    assert (options["device"], options["cache_size"], options["max_num_seqs"], options["enable_prefix_caching"]) == \
        ("CPU", 1, 8, True)
    model_dir = repo / "glm"
    assert (model_dir / "openvino_model.bin").stat().st_ino == (scripted_model / "openvino_model.bin").stat().st_ino
    assert oct(model_dir.stat().st_mode & 0o777) == "0o755"

    scheduler = openvino_genai.SchedulerConfig()
    scheduler.cache_size = options["cache_size"]
    scheduler.max_num_seqs = options["max_num_seqs"]
    scheduler.enable_prefix_caching = options["enable_prefix_caching"]
    pipeline = openvino_genai.ContinuousBatchingPipeline(
        str(model_dir / options["models_path"]), scheduler, options["device"], json.loads(options["plugin_config"]))
    config = openvino_genai.GenerationConfig()
    config.max_new_tokens = 16
    results = pipeline.generate(["hi", "hello there"], [config, config])
    assert all("42" in result.m_generation_ids[0] for result in results)


def test_repository_keeps_other_models_and_refuses_to_overwrite(scripted_model, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "config.json").write_text(json.dumps({"model_config_list": [{"config": {"name": "resnet",
                                                                                     "base_path": "resnet"}}]}))
    export(scripted_model, "-o", repo, "--name", "a", "--copy")
    export(scripted_model, "-o", repo, "--name", "b")
    config = json.loads((repo / "config.json").read_text())
    assert [g["name"] for g in config["mediapipe_config_list"]] == ["a", "b"]
    assert config["model_config_list"][0]["config"]["name"] == "resnet"
    assert (repo / "a" / "openvino_model.bin").stat().st_ino != (scripted_model / "openvino_model.bin").stat().st_ino
    marker = repo / "a" / "mine.txt"
    marker.write_text("keep")
    again = export(scripted_model, "-o", repo, "--name", "a", check=False)
    assert again.returncode == 2 and "exists; pass --force" in again.stderr and marker.exists()
    export(scripted_model, "-o", repo, "--name", "a", "--force", "--kv-cache-precision", "u8", "--ov-cache-dir",
           "/cache", "--no-prefix-caching")
    options = check_repository(repo, "a")
    assert json.loads(options["plugin_config"]) == {"CACHE_DIR": "/cache", "KV_CACHE_PRECISION": "u8"}
    assert options["enable_prefix_caching"] is False and not marker.exists()
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_npu_export_carries_the_static_shape(scripted_model, tmp_path):
    plain = export(scripted_model, "-o", tmp_path / "r", "--device", "NPU", check=False)
    assert plain.returncode == 2 and "converted with --device cpu, not for the NPU" in plain.stderr
    assert plain.stderr.count("\n") == 1 and not (tmp_path / "r" / "config.json").exists()

    npu_model = shutil.copytree(scripted_model, tmp_path / "npu-model")
    manifest = json.loads((npu_model / "glm4_edge.json").read_text())
    manifest.update(target_device="npu", npu={"max_prompt_len": 2048, "min_response_len": 512})
    (npu_model / "glm4_edge.json").write_text(json.dumps(manifest))
    export(npu_model, "-o", tmp_path / "r", "--device", "NPU", "--name", "n")
    options = check_repository(tmp_path / "r", "n")
    assert options["device"] == "NPU" and options["enable_prefix_caching"] is False
    assert json.loads(options["plugin_config"]) == {"MAX_PROMPT_LEN": 2048, "MIN_RESPONSE_LEN": 512}


@pytest.mark.parametrize(("args", "message"), [
    (["--device", "TPU"], "OVMS runs an LLM on CPU, GPU, NPU"),
    (["--max-prompt-len", "100"], "NPU settings"),
    (["--name", "a/b"], "plain name"),
    (["--cache-size", "-1"], "at least 0"),
])
def test_bad_options_are_one_line_errors(scripted_model, tmp_path, args, message):
    done = export(scripted_model, "-o", tmp_path / "r", *args, check=False)
    assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "r").exists()
