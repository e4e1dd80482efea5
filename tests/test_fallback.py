"""NPU requests over the static prompt/response shape run on the fallback device.

No NPU exists here: a CPU pipeline with an explicit static shape stands in for the NPU one (the
routing only reads the shape, never the device), and over-limit requests go to the lazily loaded
fallback pipeline, which is real OpenVINO inference of the scripted checkpoint (known greedy answer).
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from .conftest import CLI, REASONING_ANSWER, REASONING_THOUGHT, REPO

LONG_PROMPT = "hello " * 60  # well over the stand-in's MAX_PROMPT_LEN below
SHAPE = (32, 16)  # MAX_PROMPT_LEN, MIN_RESPONSE_LEN of the stand-in


@pytest.mark.parametrize(("prompt", "new", "expected"), [
    (1024, 256, True),  # exactly the KV cache
    (1024, 257, False),  # one answer token over it
    (1025, 1, False),  # prompt over MAX_PROMPT_LEN even though the cache has room
    (10, 1270, True),
    (10, 1271, False),
])
def test_fits_is_a_function_of_the_four_numbers(prompt, new, expected):
    from glm4_edge.fallback import StaticShape, fits

    assert fits(prompt, new, 1024, 256) is expected
    assert (StaticShape(1024, 256).misfit(prompt, new) is None) is expected


@pytest.fixture
def stand_in(scripted_model):
    """A fresh CPU model with the NPU's static shape and no fallback yet; fallbacks forgotten after."""
    import glm4_edge
    from glm4_edge import fallback

    model = glm4_edge.load(scripted_model, "CPU")
    yield model
    fallback._shared.clear()


def test_without_fallback_an_over_limit_request_is_a_clear_error_before_generating(stand_in):
    from glm4_edge.errors import ContextOverflowError
    from glm4_edge.fallback import StaticShape, StaticShapeError, attach

    attach(stand_in, StaticShape(*SHAPE), "none")
    assert stand_in.context_length == sum(SHAPE)
    assert stand_in.generate("hi", max_new_tokens=16, temperature=0).text == REASONING_ANSWER
    with pytest.raises(StaticShapeError, match="over MAX_PROMPT_LEN 32.*--fallback-device CPU") as caught:
        stand_in.stream(LONG_PROMPT, max_new_tokens=4)
    assert isinstance(caught.value, ContextOverflowError)  # Chat(trim_history=True) and the server handle it
    with pytest.raises(StaticShapeError, match="MAX_PROMPT_LEN \\+ MIN_RESPONSE_LEN = 48"):
        stand_in.stream("hi", max_new_tokens=45)
    assert not stand_in.busy


def test_over_limit_requests_run_on_the_lazily_loaded_shared_fallback(stand_in, scripted_model):
    import glm4_edge
    from glm4_edge.fallback import StaticShape, attach

    attach(stand_in, StaticShape(*SHAPE), "CPU", context_length=4096)
    assert stand_in.context_length == 4096 and not stand_in.fallback.loaded
    short = stand_in.generate("hi", max_new_tokens=16, temperature=0)
    assert short.stats.fallback is None and not stand_in.fallback.loaded  # fits: never loads the fallback

    reply = stand_in.generate(LONG_PROMPT, max_new_tokens=16, temperature=0)
    assert (reply.text, reply.reasoning) == (REASONING_ANSWER, REASONING_THOUGHT)  # real inference, not garbage
    assert reply.stats.fallback.startswith("prompt of ") and "MAX_PROMPT_LEN 32" in reply.stats.fallback
    assert reply.stats.device == "CPU" and reply.stats.generated_tokens > 0
    assert "fallback: prompt of" in reply.stats.summary()
    fallback_model = stand_in.fallback.model()
    assert fallback_model is not stand_in and fallback_model.static_shape is None

    other = glm4_edge.load(scripted_model, "CPU")
    attach(other, StaticShape(*SHAPE), "CPU", context_length=4096)
    assert other.fallback is stand_in.fallback  # one fallback pipeline per model folder and device

    batch = stand_in.generate_batch(["hi", LONG_PROMPT], max_new_tokens=16, temperature=0)  # generate --batch
    assert [r.text for r in batch] == [REASONING_ANSWER] * 2
    assert batch[0].stats.fallback is None and "MAX_PROMPT_LEN 32" in batch[1].stats.fallback

    answer_too_long = stand_in.generate("hi", max_new_tokens=45, temperature=0)
    assert "MIN_RESPONSE_LEN" in answer_too_long.stats.fallback
    assert answer_too_long.text == REASONING_ANSWER


def test_chat_trims_history_to_fit_without_fallback(stand_in):
    from glm4_edge.fallback import StaticShape, attach

    attach(stand_in, StaticShape(*SHAPE), "none")
    chat = stand_in.chat(trim_history=True, max_new_tokens=16, temperature=0)
    for _ in range(3):
        text = "".join(chunk.text for chunk in chat.send("hi there"))
        assert text == REASONING_ANSWER
    assert sum(m["role"] == "user" for m in chat.messages) < 3  # old turns dropped to fit MAX_PROMPT_LEN


def test_server_reports_the_fallback_in_the_response_and_metrics(scripted_model):
    from starlette.testclient import TestClient

    import glm4_edge
    from glm4_edge import fallback
    from glm4_edge.server import OpenAIServer, ServerConfig

    def load():
        model = glm4_edge.load(scripted_model, "CPU")
        fallback.attach(model, fallback.StaticShape(*SHAPE), "CPU", context_length=4096)
        return model

    server = OpenAIServer(ServerConfig(load=load, model_name="m"))
    try:
        with TestClient(server.app) as client:
            deadline = time.monotonic() + 60
            while client.get("/health").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            fits = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                             "temperature": 0}).json()
            assert fits["choices"][0]["message"]["content"] == REASONING_ANSWER
            assert "glm4_edge" not in fits  # no max_tokens: defaults to what the NPU's cache leaves
            body = {"messages": [{"role": "user", "content": LONG_PROMPT}], "temperature": 0, "max_tokens": 16}
            whole = client.post("/v1/chat/completions", json=body).json()
            assert whole["choices"][0]["message"]["content"] == REASONING_ANSWER
            assert whole["glm4_edge"]["device"] == "CPU" and "MAX_PROMPT_LEN" in whole["glm4_edge"]["fallback"]
            with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
                events = [json.loads(line[6:]) for line in response.iter_lines()
                          if line.startswith("data: {")]
            assert events[-1]["choices"][0]["finish_reason"] == "stop" and "glm4_edge" in events[-1]
            metrics = client.get("/metrics").text
            assert "glm4_edge_fallback_generations_total 2" in metrics
    finally:
        fallback._shared.clear()


def test_server_error_names_the_npu_limit():
    from glm4_edge.fallback import StaticShape, StaticShapeError
    from glm4_edge.server_common import from_glm4_edge_error

    error = from_glm4_edge_error(StaticShapeError("prompt of 1100 tokens is over MAX_PROMPT_LEN 1024", 1100, 100,
                                                  StaticShape(1024, 256)))
    assert error.status == 400 and error.body()["error"]["code"] == "context_length_exceeded"
    assert "MAX_PROMPT_LEN 1024" in error.body()["error"]["message"]


def test_cli_flags(scripted_model):
    npu = subprocess.run([*CLI, "generate", str(scripted_model), "-p", "hi", "--device", "NPU"], cwd=REPO,
                         capture_output=True, text=True)
    assert npu.returncode == 2 and npu.stderr.count("\n") == 1 and "device NPU not found" in npu.stderr
    bad = subprocess.run([*CLI, "generate", "x", "-p", "hi", "--fallback-device", "TPU"], cwd=REPO,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--fallback-device" in bad.stderr and "Traceback" not in bad.stderr
