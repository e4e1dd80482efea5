"""`glm4-edge serve` speaking Anthropic's Messages API, driven by the official `anthropic` SDK.

Servers run the scripted checkpoints from conftest (real OpenVINO inference, known greedy output):
text and GLM-4 reasoning on one pipeline behind an API key, GLM-Z1 thinking, tool calls with
continuous batching, and a never-ending model for cancellation.
"""

from __future__ import annotations

import json
import threading
import time

import anthropic
import httpx
import pytest

from .conftest import REASONING_ANSWER, REASONING_THOUGHT
from .test_server import API_KEY, start_server, stop_server

HI = [{"role": "user", "content": "hi"}]
WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
THINK = {"type": "enabled", "budget_tokens": 1024}
GREEDY = {"extra_body": {"temperature": 0}}  # the SDK no longer types sampling fields; servers take them


def _client(server, **options) -> anthropic.Anthropic:
    options.setdefault("api_key", server.api_key or "unused")
    return anthropic.Anthropic(base_url=server.base_url, max_retries=0, timeout=60, **options)


@pytest.fixture(scope="module")
def scripted(scripted_model, tmp_path_factory):
    """One LLMPipeline, behind an API key; answers `<think>想一想</think>答案你 is 42. STOP here`."""
    server = start_server(scripted_model, tmp_path_factory.mktemp("serve") / "anthropic-scripted.log",
                          "--model-name", "glm-test", "--max-body-bytes", "65536", api_key=API_KEY)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def z1(z1_model, tmp_path_factory):
    server = start_server(z1_model, tmp_path_factory.mktemp("serve") / "anthropic-z1.log", "--model-name", "z1")
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def tools(tool_model, tmp_path_factory):
    """Continuous batching; answers the call `get_weather {"city": "Beijing"}`."""
    server = start_server(tool_model, tmp_path_factory.mktemp("serve") / "anthropic-tool.log",
                          "--max-concurrency", "2", "--model-name", "tool")
    yield server
    stop_server(server)


# --- every field the SDK can send is honoured or refused ---------------------------------------------------


def _sdk_fields(module, *names: str) -> set[str]:
    fields: set[str] = set()
    for name in names:
        for base in getattr(module, name).__mro__:
            fields |= set(getattr(base, "__annotations__", {}))
    return fields


def test_every_sdk_field_is_honoured_or_refused():
    from anthropic.types import message_count_tokens_params, message_create_params

    from glm4_edge import anthropic_request as api

    known = set(api.HONOURED_FIELDS) | set(api.INFORMATIONAL_FIELDS) | set(api.REFUSED_FIELDS)
    create = _sdk_fields(message_create_params, "MessageCreateParamsStreaming", "MessageCreateParamsNonStreaming")
    count = _sdk_fields(message_count_tokens_params, "MessageCountTokensParams")
    assert {"model", "messages", "max_tokens", "stream"} <= create  # the SDK still types its parameters here
    assert (create | count) - known == set(), "new Anthropic SDK fields: honour or refuse them in anthropic_request"
    # ... and each is a field of the request model (anything else is refused as unknown).
    assert known <= set(api.MessagesRequest.model_fields)


def test_turns_map_onto_glm_turns():
    """Anthropic content blocks -> the server's chat turns (no model needed): results become observations."""
    from glm4_edge.anthropic_request import parse_messages

    body = {"model": "m", "max_tokens": 5, "system": [{"type": "text", "text": "S1"}, {"type": "text", "text": "S2"}],
            "tools": [WEATHER], "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
            "stop_sequences": ["END"], "thinking": {"type": "adaptive"},
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "x"}, {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "timeout", "is_error": True},
                    {"type": "text", "text": "and tomorrow?"}]}]}
    parsed = parse_messages(body)
    assert parsed.show_thinking and not parsed.omit_thinking and not parsed.chat.parallel_tool_calls
    assert parsed.chat.options.stop == ("END",) and parsed.chat.max_tokens == 5
    assert [t["name"] for t in parsed.chat.tools] == ["get_weather"]
    assert [(m["role"], m["content"]) for m in parsed.chat.messages] == [
        ("system", "S1\nS2"), ("user", "weather?"), ("assistant", "Let me look."), ("assistant", ""),
        ("tool", "sunny"), ("tool", "Error: timeout"), ("user", "and tomorrow?")]
    assert parsed.chat.messages[3]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                                    "arguments": '{"city": "Oslo"}'}


# --- text, thinking, stop reasons --------------------------------------------------------------------------


def test_text_non_streaming(scripted):
    reply = _client(scripted).messages.create(model="glm-test", max_tokens=100, messages=HI, **GREEDY)
    assert reply.type == "message" and reply.role == "assistant" and reply.model == "glm-test"
    assert reply.id.startswith("msg_")
    # Thinking not asked for: the reasoning is left out (its tokens still count).
    assert [block.type for block in reply.content] == ["text"] and reply.content[0].text == REASONING_ANSWER
    assert reply.stop_reason == "end_turn" and reply.stop_sequence is None
    assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > len(REASONING_ANSWER) // 4


def test_streaming_events_and_thinking(scripted):
    client = _client(scripted)
    options = dict(model="glm-test", max_tokens=100, messages=HI, thinking=THINK, **GREEDY)
    whole = client.messages.create(**options)
    with client.messages.stream(**options) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert [b.type for b in whole.content] == ["thinking", "text"]
    assert whole.content[0].thinking == REASONING_THOUGHT and whole.content[1].text == REASONING_ANSWER
    assert whole.content[0].signature  # clients send it back; any non-empty value
    assert final.model_dump(exclude={"id"}) == whole.model_dump(exclude={"id"})
    kinds = [e.type for e in events if e.type not in ("text", "thinking", "signature")]
    assert kinds[:2] == ["message_start", "content_block_start"] and kinds[-2:] == ["message_delta", "message_stop"]
    deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert deltas.index("signature_delta") < deltas.index("text_delta") and "thinking_delta" in deltas
    start = next(e for e in events if e.type == "message_start")
    assert start.message.usage.input_tokens == whole.usage.input_tokens
    assert sum(e.type == "content_block_stop" for e in events) == 2


def test_stream_raw_wire_format(scripted):
    """The wire itself: named events, ping after message_start, data repeating the event's type."""
    body = {"model": "glm-test", "max_tokens": 50, "messages": HI, "temperature": 0, "stream": True}
    with httpx.Client(base_url=scripted.base_url, headers={"x-api-key": API_KEY}, timeout=60) as http:
        text = http.post("/v1/messages", json=body).text
    events = [block.split("\n") for block in text.strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    assert names[:2] == ["message_start", "ping"] and names[-1] == "message_stop"
    for name, lines in zip(names, events, strict=True):
        assert json.loads(lines[1].removeprefix("data: "))["type"] == name


def test_stop_sequences_and_max_tokens(scripted):
    client = _client(scripted)
    stopped = client.messages.create(model="glm-test", max_tokens=100, messages=HI, **GREEDY,
                                     stop_sequences=["nothing", "STOP"])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "STOP"
    assert stopped.content[0].text == REASONING_ANSWER.split(" STOP")[0] + " "
    with client.messages.stream(model="glm-test", max_tokens=100, messages=HI, stop_sequences=["STOP"],
                                **GREEDY) as stream:
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "stop_sequence" and streamed.stop_sequence == "STOP"
    short = client.messages.create(model="glm-test", max_tokens=3, messages=HI, **GREEDY)
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3


def test_system_prompt_and_count_tokens(scripted):
    """count_tokens gives the input_tokens a request then reports; a system prompt (string or blocks) counts."""
    client = _client(scripted)
    system = [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Answer in English."}]
    reply = client.messages.create(model="glm-test", max_tokens=5, messages=HI, system=system, **GREEDY,
                                   metadata={"user_id": "u1"})
    counted = client.messages.count_tokens(model="glm-test", messages=HI, system=system)
    assert counted.input_tokens == reply.usage.input_tokens
    plain = client.messages.count_tokens(model="glm-test", messages=HI)
    assert plain.input_tokens < counted.input_tokens


def test_z1_thinking_blocks(z1):
    client = _client(z1)
    reply = client.messages.create(model="z1", max_tokens=50, messages=HI, **GREEDY, thinking=THINK)
    assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in reply.content] == [
        ("thinking", "让我想想"), ("text", "Done!")]
    hidden = client.messages.create(model="z1", max_tokens=50, messages=HI, **GREEDY,
                                    thinking={"type": "disabled"})
    assert [b.type for b in hidden.content] == ["text"] and hidden.usage.output_tokens == reply.usage.output_tokens
    omitted = client.messages.create(model="z1", max_tokens=50, messages=HI, **GREEDY,
                                     thinking={"type": "adaptive", "display": "omitted"})
    assert omitted.content[0].type == "thinking" and omitted.content[0].thinking == ""
    assert omitted.content[0].signature == reply.content[0].signature
    # Thinking sent back in the history is accepted (and dropped, as the Z1 template drops it).
    history = [*HI, {"role": "assistant", "content": reply.content}, {"role": "user", "content": "again"}]
    again = client.messages.create(model="z1", max_tokens=50, messages=history, **GREEDY, thinking=THINK)
    assert again.content[-1].text == "Done!"


# --- tools -------------------------------------------------------------------------------------------------


def test_tool_use_round_trip(tools, tool_model):
    client = _client(tools)
    messages = [{"role": "user", "content": "What is the weather in Beijing?"}]
    reply = client.messages.create(model="tool", max_tokens=50, messages=messages, tools=[WEATHER], **GREEDY)
    assert reply.stop_reason == "tool_use"
    (call,) = reply.content
    assert call.type == "tool_use" and call.id.startswith("toolu_")
    assert call.name == "get_weather" and call.input == {"city": "Beijing"}

    # The result goes back as a tool_result block; the server renders it as GLM-4's <|observation|> turn.
    messages += [{"role": "assistant", "content": reply.content},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                               "content": [{"type": "text", "text": '{"temperature_c": 21}'}]}]}]
    second = client.messages.create(model="tool", max_tokens=50, messages=messages, tools=[WEATHER], **GREEDY)
    import glm4_edge

    model = glm4_edge.load(tool_model)
    openai_tool = {"type": "function", "function": {"name": WEATHER["name"], "description": WEATHER["description"],
                                                    "parameters": WEATHER["input_schema"]}}
    history = [messages[0], {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Beijing"}'}}]},
               {"role": "tool", "content": '{"temperature_c": 21}'}]
    prompt = model.render(history, [openai_tool])
    assert "<|observation|>" in prompt and second.usage.input_tokens == model.count_tokens(prompt)
    assert client.messages.count_tokens(model="tool", messages=messages, tools=[WEATHER]).input_tokens == (
        second.usage.input_tokens)


def test_tool_use_streaming(tools):
    with _client(tools).messages.stream(model="tool", max_tokens=50, messages=HI, tools=[WEATHER],
                                        **GREEDY) as stream:
        events = list(stream)
        final = stream.get_final_message()
    (start,) = [e for e in events if e.type == "content_block_start"]
    assert start.content_block.type == "tool_use" and start.content_block.input == {}
    partial = "".join(e.delta.partial_json for e in events if e.type == "content_block_delta")
    assert json.loads(partial) == {"city": "Beijing"}
    assert final.stop_reason == "tool_use" and final.content[0].input == {"city": "Beijing"}


def test_tool_choice_none_tool_and_any(tools):
    client = _client(tools)
    common = dict(model="tool", max_tokens=50, messages=HI, tools=[WEATHER], **GREEDY)
    plain = client.messages.create(**common, tool_choice={"type": "none"})
    assert plain.stop_reason == "end_turn" and plain.content[0].text.startswith("get_weather")
    for choice in ({"type": "tool", "name": "get_weather"}, {"type": "any", "disable_parallel_tool_use": True}):
        forced = client.messages.create(**common, tool_choice=choice)
        assert forced.stop_reason == "tool_use" and forced.content[-1].input == {"city": "Beijing"}


# --- errors, in Anthropic's shape, through the SDK's exception classes --------------------------------------


@pytest.mark.parametrize(("options", "field"), [
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]}, "messages.0.content.0"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {
        "type": "text", "media_type": "text/plain", "data": "x"}}]}]}, "messages.0.content.0"),
    ({"extra_body": {"frequency_penalty": 1}}, "frequency_penalty"),
    ({"speed": "fast"}, "speed"),
    ({"container": "c1"}, "container"),
    ({"output_config": {"effort": "low"}}, "output_config.effort"),
    ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
    ({"stop_sequences": [""] * 20}, "stop_sequences"),
    ({"extra_body": {"temperature": 7}}, "temperature"),
    ({"tool_choice": {"type": "tool", "name": "nope"}, "tools": [WEATHER]}, "tool_choice"),
    ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools.0: server tool 'bash_20250124'"),
    ({"tools": [{**WEATHER, "strict": True}]}, "tools.0.strict"),
    ({"messages": [*HI, {"role": "assistant", "content": "The answer is"}]}, "messages"),
    ({"max_tokens": 5000}, "max_tokens"),
])
def test_bad_requests_name_the_field(scripted, options, field):
    request = {"model": "glm-test", "max_tokens": 10, "messages": HI, **options}
    with pytest.raises(anthropic.BadRequestError) as caught:
        _client(scripted).messages.create(**request)
    error = caught.value
    assert error.status_code == 400 and error.body["type"] == "error"
    assert error.body["error"]["type"] == "invalid_request_error"
    assert field in error.body["error"]["message"], error.body


def test_error_statuses_in_anthropic_shape(scripted):
    client = _client(scripted)
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="another-model", max_tokens=10, messages=HI)
    assert caught.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.AuthenticationError) as caught:
        _client(scripted, api_key="wrong").messages.create(model="glm-test", max_tokens=10, messages=HI)
    assert caught.value.body["error"]["type"] == "authentication_error"
    with httpx.Client(base_url=scripted.base_url, headers={"x-api-key": API_KEY}, timeout=60) as http:
        missing = http.post("/v1/messages", json={"model": "glm-test", "messages": HI})
        assert missing.status_code == 400 and missing.json()["error"]["message"].startswith("max_tokens")
        big = http.post("/v1/messages", json={"model": "glm-test", "max_tokens": 5,
                                              "messages": [{"role": "user", "content": "x" * 70000}]})
        assert big.status_code == 413 and big.json() == {"type": "error", "error": {
            "type": "request_too_large", "message": big.json()["error"]["message"]}}
        wrong_method = http.get("/v1/messages")
        assert wrong_method.status_code == 405 and wrong_method.json()["type"] == "error"
        bad_json = http.post("/v1/messages", content=b"{", headers={"Content-Type": "application/json"})
        assert bad_json.json()["error"]["type"] == "invalid_request_error"
        # The OpenAI endpoints keep OpenAI's shape.
        assert set(http.post("/v1/chat/completions", json={"messages": []}).json()["error"]) == {
            "message", "type", "param", "code"}


def test_api_key_as_x_api_key(scripted):
    client = anthropic.Anthropic(base_url=scripted.base_url, api_key=None, max_retries=0,
                                 default_headers={"x-api-key": API_KEY})
    assert client.messages.count_tokens(model="glm-test", messages=HI).input_tokens > 0
    response = httpx.post(f"{scripted.base_url}/v1/messages/count_tokens", headers={"x-api-key": "nope"},
                          json={"model": "glm-test", "messages": HI})
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    # The same header opens the OpenAI endpoints too.
    assert httpx.get(f"{scripted.base_url}/v1/models", headers={"x-api-key": API_KEY}).status_code == 200


def test_overloaded_while_loading(scripted_model):
    """While the model loads, Anthropic clients get 529 overloaded_error with Retry-After (the SDK retries it)."""
    from starlette.testclient import TestClient

    import glm4_edge
    from glm4_edge.server import OpenAIServer, ServerConfig

    release = threading.Event()

    def slow_load():
        release.wait(30)
        return glm4_edge.load(scripted_model)

    server = OpenAIServer(ServerConfig(load=slow_load, model_name="m"))
    with TestClient(server.app) as http:
        client = anthropic.Anthropic(base_url=str(http.base_url), api_key="unused", http_client=http,
                                     max_retries=0)
        with pytest.raises(anthropic.OverloadedError) as caught:
            client.messages.create(model="m", max_tokens=5, messages=HI)
        assert caught.value.response.headers["retry-after"] == "5"
        assert caught.value.body["error"]["type"] == "overloaded_error"
        release.set()


def test_browser_preflight_allows_anthropic_headers(scripted_model):
    from starlette.testclient import TestClient

    from glm4_edge.server import OpenAIServer, ServerConfig

    def never_loads():
        raise RuntimeError("not needed")

    server = OpenAIServer(ServerConfig(load=never_loads, model_name="m", api_key="k",
                                       allow_origins=("http://localhost:3000",)))
    with TestClient(server.app) as http:
        answer = http.options("/v1/messages", headers={
            "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key, anthropic-version, content-type"})
    assert answer.status_code == 200, answer.text
    assert "x-api-key" in answer.headers["access-control-allow-headers"].lower()


# --- cancellation ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def endless(loop_model, tmp_path_factory):
    server = start_server(loop_model, tmp_path_factory.mktemp("serve") / "anthropic-loop.log")
    yield server
    stop_server(server)


def test_disconnect_mid_stream_stops_generation(endless):
    cancelled = endless.metric("glm4_edge_generations_cancelled_total")
    tokens = endless.metric("glm4_edge_generated_tokens_total")
    with _client(endless).messages.stream(model=endless.model_name, max_tokens=4000, messages=HI,
                                          **GREEDY) as stream:
        text = [e.text for _, e in zip(range(20), stream, strict=False) if e.type == "text"]
    assert "tick" in "".join(text)
    deadline = time.monotonic() + 10
    while endless.metric("glm4_edge_generations_cancelled_total") == cancelled:
        assert time.monotonic() < deadline, "the server never noticed the disconnect"
        time.sleep(0.02)
    assert endless.metric("glm4_edge_requests_in_flight") == 0
    assert endless.metric("glm4_edge_generated_tokens_total") - tokens < 1000
