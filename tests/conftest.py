"""Session fixtures: tiny GLM-4 checkpoints built at test time and converted once.

Scripted models (see `glm4_edge.convert.synthetic.build_scripted_checkpoint`) answer a fixed text
under greedy decoding, so streaming, stop strings, reasoning and tool calls are checked against
real OpenVINO inference with known output.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# litellm fetches a price list from GitHub on import; tests stay offline with its bundled copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "glm4_edge.cli.main"]

# The scripted answers the fixtures below produce (greedy).
REASONING_PIECES = ["\n", "<think>", "想一想", "</think>", "答案", b"\xe4", b"\xbd", b"\xa0", " is", " 42", ".",
                    " STOP", " here"]
REASONING_ANSWER = "答案你 is 42. STOP here"
REASONING_THOUGHT = "想一想"
TOOL_PIECES = ["get_weather", "\n", '{"city": ', '"Beijing"', "}"]
LOOP_PIECES = ["\n", "tick", " tock", " 滴", "答", " "]
# Exactly four tokens, then the end-of-turn token: with max_new_tokens=5 the turn ends on the last one allowed.
FOUR_PIECES = ["\n", "One", " two", " three"]
FOUR_ANSWER = "One two three"


def _convert(source: Path, output: Path, **options) -> Path:
    from glm4_edge.convert.export import ConvertOptions, convert

    convert(ConvertOptions(source=str(source), output=output, **options))
    return output


@pytest.fixture(scope="session", autouse=True)
def model_store(tmp_path_factory) -> Path:
    """Tests never touch the user's own model store or compile cache: $GLM4_EDGE_HOME and the cache root
    point into the session's temp folder."""
    from glm4_edge.devices import CACHE_ENV

    home = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GLM4_EDGE_HOME", str(home))
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("compile-cache")))
        yield home


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_glm4(workdir) -> Path:
    from glm4_edge.convert.synthetic import build_checkpoint

    return build_checkpoint(workdir / "tiny-glm4", "glm4")


@pytest.fixture(scope="session")
def tiny_glm(workdir) -> Path:
    from glm4_edge.convert.synthetic import build_checkpoint

    return build_checkpoint(workdir / "tiny-glm", "glm")


@pytest.fixture(scope="session")
def tiny_chatglm(workdir, tiny_glm) -> Path:
    from glm4_edge.convert.synthetic import write_legacy_chatglm

    return write_legacy_chatglm(tiny_glm, workdir / "tiny-chatglm")


@pytest.fixture(scope="session")
def tiny_int4(workdir, tiny_glm4) -> Path:
    return _convert(tiny_glm4, workdir / "tiny-glm4-int4-ov")


@pytest.fixture(scope="session")
def scripted_model(workdir) -> Path:
    """Answers `\\n<think>想一想</think>答案你 is 42. STOP here` then ends its turn."""
    from glm4_edge.convert.synthetic import build_scripted_checkpoint

    source = build_scripted_checkpoint(workdir / "scripted", REASONING_PIECES)
    return _convert(source, workdir / "scripted-fp16-ov", weight_format="fp16")


@pytest.fixture(scope="session")
def tool_model(workdir) -> Path:
    """Answers the tool call `get_weather\\n{"city": "Beijing"}` then `<|observation|>`."""
    from glm4_edge.convert.synthetic import build_scripted_checkpoint

    source = build_scripted_checkpoint(workdir / "tool", TOOL_PIECES, end="<|observation|>")
    return _convert(source, workdir / "tool-fp16-ov", weight_format="fp16")


@pytest.fixture(scope="session")
def loop_model(workdir) -> Path:
    """Never ends its turn: `tick tock 滴答 tick tock ...` until max_new_tokens or a stop."""
    from glm4_edge.convert.synthetic import build_scripted_checkpoint

    source = build_scripted_checkpoint(workdir / "loop", LOOP_PIECES, loop=True)
    return _convert(source, workdir / "loop-fp16-ov", weight_format="fp16")


@pytest.fixture(scope="session")
def four_token_model(workdir) -> Path:
    """Answers `\nOne two three` (4 tokens) then `<|user|>`: 5 generated tokens in all."""
    from glm4_edge.convert.synthetic import build_scripted_checkpoint

    source = build_scripted_checkpoint(workdir / "four", FOUR_PIECES)
    return _convert(source, workdir / "four-fp16-ov", weight_format="fp16")


@pytest.fixture(scope="session")
def z1_model(workdir) -> Path:
    """A Z1-style template whose prompt already opens `<think>`: the answer starts inside reasoning."""
    from glm4_edge.convert.synthetic import build_scripted_checkpoint

    source = build_scripted_checkpoint(workdir / "GLM-Z1-scripted", ["让我想想", "</think>", "\n", "Done", "!"],
                                       reasoning=True, start="<think>")
    return _convert(source, workdir / "z1-scripted-fp16-ov", weight_format="fp16")


PYTHON_CALL_PIECES = ["python", "\n", "```python\n", "print(6*7)", "\n```"]


@pytest.fixture(scope="session")
def python_model(workdir) -> Path:
    """Calls GLM-4's built-in python tool: `python\\n```python\\nprint(6*7)\\n```` then `<|observation|>`."""
    from glm4_edge.convert.synthetic import build_scripted_checkpoint

    source = build_scripted_checkpoint(workdir / "python-tool", PYTHON_CALL_PIECES, end="<|observation|>")
    return _convert(source, workdir / "python-tool-fp16-ov", weight_format="fp16")


@pytest.fixture(scope="session")
def glm4v_checkpoint(workdir) -> Path:
    """A tiny random GLM-4V checkpoint in the real layout (legacy chatglm + vision tower), see test_vision."""
    from glm4_edge.convert.vision_synthetic import build_vision_checkpoint

    folder = workdir / "glm4v"
    folder.mkdir()
    return build_vision_checkpoint(folder / "tiny-glm-4v")


@pytest.fixture(scope="session")
def glm4v_model(glm4v_checkpoint) -> Path:
    """`glm4v_checkpoint` converted at fp16 (weights stored exactly: see test_vision)."""
    return _convert(glm4v_checkpoint, glm4v_checkpoint.parent / "tiny-glm-4v-fp16-ov", weight_format="fp16")
