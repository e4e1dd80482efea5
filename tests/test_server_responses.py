"""`POST /v1/responses`: the official `openai` client's `responses.create` against the real server.

Scripted checkpoints (conftest) give known greedy answers: reasoning plus text, a tool call, an endless
answer. The scripted server decodes with continuous batching (--max-concurrency 2), the tool server with
one LLMPipeline; disconnects are checked on both.
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from . import test_server
from .conftest import REASONING_ANSWER, REASONING_THOUGHT

# The chat tests' module-scoped servers, started again for this module.
scripted_server = test_server.scripted_server
tool_server = test_server.tool_server
loop_server = test_server.loop_server
batched_loop_server = test_server.batched_loop_server

FUNCTION_TOOL = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                "required": ["city"]}, "strict": False}
CHAT_TOOL = {"type": "function", "function": {k: v for k, v in FUNCTION_TOOL.items() if k not in ("type", "strict")}}
WEATHER = "What is the weather in Beijing?"


def _created(server, **options):
    options.setdefault("model", server.model_name)
    options.setdefault("temperature", 0)
    return server.client().responses.create(**options)


# --- text, reasoning, usage -------------------------------------------------------------------------------


def test_whole_response_has_reasoning_message_and_usage(scripted_server):
    response = _created(scripted_server, input="hi")
    assert response.object == "response" and response.id.startswith("resp_") and response.status == "completed"
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.content[0].text == REASONING_THOUGHT
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert message.content[0].type == "output_text" and response.output_text == REASONING_ANSWER
    usage = response.usage
    assert usage.input_tokens > 0 and usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert 0 < usage.output_tokens_details.reasoning_tokens < usage.output_tokens
    chat = scripted_server.client().chat.completions.create(model="glm-test", messages=[
        {"role": "user", "content": "hi"}], temperature=0)
    assert usage.input_tokens == chat.usage.prompt_tokens  # the same prompt as the chat endpoint's


def test_stream_events_build_the_same_response(scripted_server):
    whole = _created(scripted_server, input="hi")
    events = list(_created(scripted_server, input="hi", stream=True))
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert kinds.count("response.output_item.added") == kinds.count("response.output_item.done") == 2
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == REASONING_THOUGHT
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == REASONING_ANSWER and len(deltas) > 3  # really streamed, piece by piece
    (done,) = [e for e in events if e.type == "response.output_text.done"]
    assert done.text == REASONING_ANSWER
    final = events[-1].response
    assert final.output_text == whole.output_text and final.usage.output_tokens == whole.usage.output_tokens
    assert final.output[1].id == done.item_id == events[kinds.index("response.content_part.added", 5)].item_id
    _check_shapes(scripted_server, {"input": "hi"})


def _check_shapes(server, body: dict) -> None:
    """The raw JSON (whole and every streamed event) validates against the SDK's own pydantic types."""
    from openai.types.responses import Response, ResponseStreamEvent
    from pydantic import TypeAdapter

    with server.http() as http:
        whole = http.post("/v1/responses", json=body).json()
        raw = http.post("/v1/responses", json={**body, "stream": True}).text
    Response.model_validate(whole)
    assert raw.startswith("event: response.created\ndata: {") and "[DONE]" not in raw
    events = TypeAdapter(ResponseStreamEvent)
    for block in raw.strip().split("\n\n"):
        name, data = block.split("\n")
        event = events.validate_python(json.loads(data.removeprefix("data: ")))
        assert name == f"event: {event.type}"


def test_max_output_tokens_gives_incomplete(scripted_server):
    response = _created(scripted_server, input="hi", max_output_tokens=5)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 5
    events = list(_created(scripted_server, input="hi", max_output_tokens=5, stream=True))
    assert events[-1].type == "response.incomplete"


def test_instructions_and_previous_response_id(scripted_server):
    first = _created(scripted_server, input="hi")
    plain = _created(scripted_server, input="hi again")
    follow = _created(scripted_server, input="hi again", previous_response_id=first.id)
    # The follow-up's prompt holds the first turn and its answer: exactly the chat endpoint's prompt.
    chat = scripted_server.client().chat.completions.create(model="glm-test", temperature=0, messages=[
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": REASONING_ANSWER},
        {"role": "user", "content": "hi again"}])
    assert follow.usage.input_tokens == chat.usage.prompt_tokens > plain.usage.input_tokens
    assert follow.previous_response_id == first.id
    instructed = _created(scripted_server, input="hi again", instructions="Answer in French.")
    assert instructed.instructions == "Answer in French." and instructed.usage.input_tokens > plain.usage.input_tokens

    client = scripted_server.client()
    assert client.responses.retrieve(first.id).output_text == REASONING_ANSWER
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as caught:
        _created(scripted_server, input="and?", previous_response_id=first.id)
    assert caught.value.body["param"] == "previous_response_id" and "store: false" in caught.value.body["message"]


def test_store_false_keeps_nothing(scripted_server):
    response = _created(scripted_server, input="hi", store=False)
    assert response.store is False and response.output_text == REASONING_ANSWER
    with pytest.raises(openai.NotFoundError):
        scripted_server.client().responses.retrieve(response.id)


@pytest.fixture(scope="module")
def z1_server(z1_model, tmp_path_factory):
    server = test_server.start_server(z1_model, tmp_path_factory.mktemp("serve") / "z1.log")
    yield server
    test_server.stop_server(server)


def test_z1_thinking_is_a_reasoning_item_and_is_not_carried_over(z1_server):
    """GLM-Z1's prompt opens <think>: the answer starts inside reasoning, and its template drops past thinking."""
    first = _created(z1_server, input="hi")
    chat = z1_server.client().chat.completions.create(model=z1_server.model_name, temperature=0,
                                                      messages=[{"role": "user", "content": "hi"}])
    reasoning, message = first.output
    assert reasoning.content[0].text == chat.choices[0].message.reasoning_content == "让我想想"
    assert message.content[0].text == chat.choices[0].message.content and first.output_text
    follow = _created(z1_server, input="and then?", previous_response_id=first.id)
    again = z1_server.client().chat.completions.create(model=z1_server.model_name, temperature=0, messages=[
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "and then?"}])
    assert follow.usage.input_tokens == again.usage.prompt_tokens
    # Reasoning items sent back (as openai-agents does) are accepted and, as the template says, left out.
    stateless = _created(z1_server, input="hi", store=False, include=["reasoning.encrypted_content"])
    assert stateless.output[0].encrypted_content and stateless.output_text == first.output_text
    sent_back = _created(z1_server, input=[{"role": "user", "content": "hi"},
                                           *[item.model_dump(exclude_none=True) for item in stateless.output],
                                           {"role": "user", "content": "and then?"}])
    assert sent_back.usage.input_tokens == follow.usage.input_tokens


# --- tools ------------------------------------------------------------------------------------------------


def test_function_call_round_trip(tool_server):
    first = _created(tool_server, input=WEATHER, tools=[FUNCTION_TOOL])
    (call,) = first.output
    assert call.type == "function_call" and call.call_id.startswith("call_") and call.status == "completed"
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Beijing"}
    result = {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"temperature_c": 21})}

    chained = _created(tool_server, input=[result], tools=[FUNCTION_TOOL], previous_response_id=first.id)
    explicit = _created(tool_server, tools=[FUNCTION_TOOL], input=[
        {"role": "user", "content": WEATHER}, call.model_dump(exclude_none=True), result])
    # Both carry the same conversation: the chat endpoint's prompt with the observation turn.
    chat = tool_server.client().chat.completions.create(model=tool_server.model_name, temperature=0, tools=[CHAT_TOOL],
                                                        messages=[{"role": "user", "content": WEATHER},
                                                                  {"role": "assistant", "content": "", "tool_calls": [
                                                                      {"id": call.call_id, "type": "function",
                                                                       "function": {"name": call.name,
                                                                                    "arguments": call.arguments}}]},
                                                                  {"role": "tool", "tool_call_id": call.call_id,
                                                                   "content": result["output"]}])
    assert chained.usage.input_tokens == explicit.usage.input_tokens == chat.usage.prompt_tokens
    assert chained.usage.input_tokens > first.usage.input_tokens + 5


def test_function_call_streaming(tool_server):
    events = list(_created(tool_server, input=WEATHER, tools=[FUNCTION_TOOL], stream=True))
    added = [e.item for e in events if e.type == "response.output_item.added"]
    assert [item.type for item in added] == ["function_call"]
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert json.loads(done.arguments) == {"city": "Beijing"} == json.loads("".join(deltas))
    assert done.item_id == added[0].id and events[-1].response.output[0].name == "get_weather"
    _check_shapes(tool_server, {"input": WEATHER, "tools": [FUNCTION_TOOL]})


def test_tool_choice_none_and_named(tool_server):
    none = _created(tool_server, input=WEATHER, tools=[FUNCTION_TOOL], tool_choice="none", max_output_tokens=20)
    assert [item.type for item in none.output] == ["message"]
    named = _created(tool_server, input=WEATHER, tools=[FUNCTION_TOOL],
                     tool_choice={"type": "function", "name": "get_weather"})
    assert named.output[0].type == "function_call" and named.tool_choice.name == "get_weather"


# --- refusals and errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "param"), [
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "tools[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:,"}]}]}, "input[0].content[0]"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"include": ["message.output_text.logprobs"]}, "include"),
    ({"reasoning": {"effort": "low"}}, "reasoning"),
    ({"background": True}, "background"),
    ({"truncation": "auto"}, "truncation"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"text": {"verbosity": "low"}}, "text.verbosity"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
    ({"text": {"format": {"type": "json_schema", "name": "r", "schema": {"type": "object", "not": {}}}}},
     "text.format"),
    ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
])
def test_refused_fields_name_themselves(scripted_server, options, param):
    options = {"input": "hi", **options}
    with pytest.raises(openai.BadRequestError) as caught:
        _created(scripted_server, **options)
    body = caught.value.body
    assert body["param"] == param and param.split("[")[0].split(".")[0] in body["message"], body
    assert "\n" not in body["message"]


def test_defaults_and_informational_fields_are_accepted(scripted_server):
    response = _created(scripted_server, input="hi", service_tier="auto", truncation="disabled", store=True,
                        user="u1", metadata={"k": "v"}, safety_identifier="s", prompt_cache_key="p",
                        parallel_tool_calls=True, max_tool_calls=3, reasoning={"effort": None},
                        text={"format": {"type": "text"}, "verbosity": "medium"}, include=[], top_p=1.0,
                        top_logprobs=0, background=False)
    assert response.output_text == REASONING_ANSWER and response.metadata == {"k": "v"}


def test_context_overflow_names_input(scripted_server):
    with pytest.raises(openai.BadRequestError) as caught:
        _created(scripted_server, input="hi " * 5000, max_output_tokens=10)
    assert caught.value.body["param"] == "input" and "max_output_tokens" in caught.value.body["message"]


def test_unknown_path_is_404_with_a_hint(scripted_server):
    with scripted_server.http() as http:
        response = http.post("/v1/respones", json={})
        assert http.get("/v1/responses/resp_nope").status_code == 404
    error = response.json()["error"]
    assert response.status_code == 404 and error["type"] == "invalid_request_error" and error["code"] == "not_found"
    assert "/v1/responses" in error["message"] and "/v1/chat/completions" in error["message"]


def test_api_key_guards_responses(loop_server):
    assert httpx.post(f"{loop_server.base_url}/v1/responses", json={"input": "hi"}).status_code == 401
    assert httpx.get(f"{loop_server.base_url}/v1/responses/resp_x").status_code == 401


# --- a client that leaves -------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["loop_server", "batched_loop_server"])
def test_disconnect_mid_stream_stops_generation(engine, request):
    server = request.getfixturevalue(engine)
    cancelled = server.metric("glm4_edge_generations_cancelled_total")
    stream = _created(server, input="hi", max_output_tokens=4000, stream=True)
    seen = [event for _, event in zip(range(8), stream, strict=False)]
    assert "tick" in "".join(getattr(e, "delta", "") for e in seen)
    stream.close()
    deadline = time.monotonic() + 10
    while server.metric("glm4_edge_generations_cancelled_total") == cancelled:
        assert time.monotonic() < deadline, "the server never noticed the disconnect"
        time.sleep(0.02)
    assert server.metric("glm4_edge_requests_in_flight") == 0
    with pytest.raises(httpx.ReadTimeout):  # non-streaming: left while decoding
        headers = {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}
        httpx.post(f"{server.base_url}/v1/responses", timeout=0.3, headers=headers,
                   json={"input": "hi", "max_output_tokens": 4000})
    deadline = time.monotonic() + 10
    while server.metric("glm4_edge_generations_cancelled_total") == cancelled + 1:
        assert time.monotonic() < deadline, "a non-streaming response kept generating after its client left"
        time.sleep(0.02)
    assert _created(server, input="hi", max_output_tokens=6).usage.output_tokens == 6


def test_store_is_bounded_by_count_age_and_size():
    from glm4_edge.server_responses import ResponseStore

    turn = [{"role": "user", "content": "x" * 100}]
    store = ResponseStore(max_responses=2)
    for name in ("a", "b", "c"):
        store.put({"id": name}, turn)
    assert store.get("a") is None and store.get("b") and store.get("c")  # the oldest went first
    sized = ResponseStore(max_chars=300)  # one turn is 135 characters of JSON
    sized.put({"id": "a"}, turn)
    sized.put({"id": "b"}, turn)
    sized.put({"id": "c"}, turn * 2)
    assert [name for name in "abc" if sized.get(name)] == ["c"]
    aged = ResponseStore(ttl_s=0.05)
    aged.put({"id": "a"}, turn)
    assert aged.get("a")
    time.sleep(0.1)
    assert aged.get("a") is None and aged.delete("a") is False
