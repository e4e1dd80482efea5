"""Client conformance: `openai`, langchain-openai, litellm and openai-agents against `glm4-edge serve`.

The server runs the embedded tiny chat model (models/glm4-tiny-chat, converted to fp16) in both
serving modes: one LLMPipeline (--max-concurrency 1) and continuous batching (--max-concurrency 2).
Covered: tool_choice "required" among several tools, structured output that ends (no whitespace
padding), legacy functions, refused fields by name, disconnects counted wherever they happen, and the
Responses API (/v1/responses) as the SDK, LangChain (use_responses_api), litellm and openai-agents use it.
"""

from __future__ import annotations

import json
import time

import httpx
import jsonschema
import openai
import pytest

from .conftest import REPO, _convert
from .test_server import HELLO, start_server, stop_server

TINY_CHAT = REPO / "models" / "glm4-tiny-chat"
ADD = [{"role": "user", "content": "What is 2 plus 3?"}]
ADD_TOOL = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"], "additionalProperties": False}}}
CITY_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                   "required": ["city"]}}}
TOOLS = [ADD_TOOL, CITY_TOOL]
RESULT_SCHEMA = {"type": "object", "properties": {"result": {"type": "integer"}}, "required": ["result"],
                 "additionalProperties": False}
MAX_TOKENS = 200  # far above what a compact answer needs (~10 tokens)


@pytest.fixture(scope="module")
def tiny_chat(workdir):
    return _convert(TINY_CHAT, workdir / "clients-chat-fp16", weight_format="fp16")


@pytest.fixture(scope="module", params=["1", "2"], ids=["single", "batched"])
def server(request, tiny_chat, tmp_path_factory):
    concurrency = request.param
    running = start_server(tiny_chat, tmp_path_factory.mktemp("serve") / f"clients-{concurrency}.log",
                           "--max-concurrency", concurrency, "--model-name", "tiny")
    running.concurrency = int(concurrency)
    yield running
    stop_server(running)


def _schema(name: str) -> dict:
    return next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)


def _check_call(name: str, arguments: str) -> None:
    assert name in ("add", "get_weather")
    jsonschema.validate(json.loads(arguments), _schema(name))


# --- item 1: tool_choice "required" with several tools ---------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_required_tool_choice_among_several_tools(server, stream):
    client = server.client()
    options = dict(model="tiny", messages=ADD, tools=TOOLS, tool_choice="required", temperature=0,
                   max_tokens=MAX_TOKENS)
    if not stream:
        reply = client.chat.completions.create(**options)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        (call,) = choice.message.tool_calls
        _check_call(call.function.name, call.function.arguments)
        return
    chunks = list(client.chat.completions.create(**options, stream=True))
    calls = [c for chunk in chunks for choice in chunk.choices for c in (choice.delta.tool_calls or [])]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"]
    (call,) = calls
    _check_call(call.function.name, call.function.arguments)


def test_langchain_bind_tools_any(server):
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", model="tiny", temperature=0,
                      max_tokens=MAX_TOKENS, max_retries=0)
    message = chat.bind_tools(TOOLS, tool_choice="any").invoke("What is 2 plus 3?")
    (call,) = message.tool_calls
    _check_call(call["name"], json.dumps(call["args"]))


def test_litellm_required_and_structured_output(server):
    import litellm

    common = dict(model="openai/tiny", api_base=f"{server.base_url}/v1", api_key="unused", temperature=0,
                  max_tokens=MAX_TOKENS, messages=ADD)
    reply = litellm.completion(**common, tools=TOOLS, tool_choice="required")
    call = reply.choices[0].message.tool_calls[0]
    _check_call(call.function.name, call.function.arguments)
    fmt = {"type": "json_schema", "json_schema": {"name": "r", "schema": RESULT_SCHEMA}}
    reply = litellm.completion(**common, response_format=fmt)
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content), RESULT_SCHEMA)


# --- item 3: structured output ends -------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("kind", ["json_schema", "json_object"])
def test_structured_output_finishes_without_padding(server, kind, stream):
    """Free whitespace let this model write `{` then newlines until max_tokens; compact JSON ends."""
    fmt = ({"type": "json_object"} if kind == "json_object" else
           {"type": "json_schema", "json_schema": {"name": "result", "schema": RESULT_SCHEMA}})
    options = dict(model="tiny", messages=ADD, temperature=0, max_tokens=MAX_TOKENS, response_format=fmt)
    client = server.client()
    if stream:
        chunks = list(client.chat.completions.create(**options, stream=True,
                                                     stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        usage = chunks[-1].usage
    else:
        reply = client.chat.completions.create(**options)
        text, finish, usage = reply.choices[0].message.content, [reply.choices[0].finish_reason], reply.usage
    if kind == "json_object":  # any key: this model may write one long string, but no whitespace padding
        assert text.startswith(('{"', "{}")), text
        return
    jsonschema.validate(json.loads(text), RESULT_SCHEMA)
    assert finish == ["stop"], text
    assert usage.completion_tokens < MAX_TOKENS // 2 and not _padded(text), text


def test_forced_tool_arguments_are_compact(server):
    choice = {"type": "function", "function": {"name": "add"}}
    reply = server.client().chat.completions.create(model="tiny", messages=ADD, tools=TOOLS, tool_choice=choice,
                                                    temperature=0, max_tokens=MAX_TOKENS)
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name == "add" and reply.usage.completion_tokens < MAX_TOKENS // 2
    jsonschema.validate(json.loads(call.function.arguments), _schema("add"))


def test_langchain_structured_output(server):
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", model="tiny", temperature=0,
                      max_tokens=MAX_TOKENS, max_retries=0)
    schema = {"title": "Result", "description": "The sum", **RESULT_SCHEMA}
    value = chat.with_structured_output(schema, method="json_schema").invoke("What is 2 plus 3?")
    jsonschema.validate(value, RESULT_SCHEMA)


# --- item 4: every field honoured or refused ------------------------------------------------------------


def _sdk_fields(params_module) -> set[str]:
    """Every request field the SDK types for this endpoint, streaming or not."""
    names: set[str] = set()
    for cls in (params_module.CompletionCreateParamsStreaming, params_module.CompletionCreateParamsNonStreaming):
        for base in cls.__mro__:
            names |= set(getattr(base, "__annotations__", {}))
    return names


def test_every_sdk_field_is_honoured_or_refused():
    from openai.types import completion_create_params as completion
    from openai.types.chat import completion_create_params as chat

    from glm4_edge import server_tools

    known = set(server_tools.HONOURED_FIELDS) | set(server_tools.INFORMATIONAL_FIELDS) | set(
        server_tools.REFUSED_FIELDS)
    for module in (chat, completion):
        fields = _sdk_fields(module)
        assert "model" in fields and "temperature" in fields  # the SDK still types its parameters here
        assert fields - known == set(), "new OpenAI SDK fields: honour or refuse them in server_tools"


@pytest.mark.parametrize(("field", "value"), [
    ("reasoning_effort", "low"),
    ("web_search_options", {"search_context_size": "low"}),
    ("service_tier", "flex"),
    ("verbosity", "low"),
    ("modalities", ["text", "audio"]),
    ("store", True),
    ("logprobs", True),
])
def test_refused_fields_name_themselves(server, field, value):
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().chat.completions.create(model="tiny", messages=ADD, max_tokens=3, **{field: value})
    assert caught.value.body["param"] == field and field in caught.value.body["message"]


def test_defaults_and_informational_fields_are_accepted(server):
    reply = server.client().chat.completions.create(
        model="tiny", messages=ADD, max_tokens=3, temperature=0, service_tier="auto", verbosity="medium",
        modalities=["text"], store=False, user="u1", metadata={"k": "v"}, safety_identifier="s",
        prompt_cache_key="p", parallel_tool_calls=True)
    assert reply.usage.completion_tokens >= 1


def test_bounds_print_as_integers(server):
    with server.http() as http:
        body = {"messages": ADD, "max_tokens": 2**31 + 1}
        message = http.post("/v1/chat/completions", json=body).json()["error"]["message"]
    assert "2147483648" in message and "e+" not in message


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_legacy_functions_answer_in_legacy_shape(server, stream):
    functions = [t["function"] for t in TOOLS]
    options = dict(model="tiny", messages=ADD, functions=functions, function_call={"name": "add"}, temperature=0,
                   max_tokens=MAX_TOKENS)
    client = server.client()
    if stream:
        chunks = list(client.chat.completions.create(**options, stream=True))
        calls = [c.choices[0].delta.function_call for c in chunks if c.choices and c.choices[0].delta.function_call]
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        (call,) = calls
    else:
        reply = client.chat.completions.create(**options)
        call, finish = reply.choices[0].message.function_call, [reply.choices[0].finish_reason]
        assert reply.choices[0].message.tool_calls is None
    assert finish == ["function_call"] and call.name == "add"
    jsonschema.validate(json.loads(call.arguments), _schema("add"))


def test_legacy_and_new_tools_together_are_refused(server):
    with pytest.raises(openai.BadRequestError) as caught:
        server.client().chat.completions.create(model="tiny", messages=ADD, functions=[ADD_TOOL["function"]],
                                                tools=TOOLS, max_tokens=3)
    assert caught.value.body["param"] == "functions"


# --- item 5: the Anthropic Messages API, as coding agents speak it ------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_anthropic_sdk_any_tool_and_structured_output(server, stream):
    """The official `anthropic` SDK: tool_choice any among several tools, then output_config.format."""
    import anthropic

    client = anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)
    tools = [{"name": t["function"]["name"], "description": t["function"]["description"],
              "input_schema": t["function"]["parameters"]} for t in TOOLS]
    common = dict(model="tiny", max_tokens=MAX_TOKENS, messages=ADD, extra_body={"temperature": 0})

    def ask(**options):
        if not stream:
            return client.messages.create(**common, **options)
        with client.messages.stream(**common, **options) as events:
            return events.get_final_message()

    reply = ask(tools=tools, tool_choice={"type": "any"})
    assert reply.stop_reason == "tool_use", reply
    (call,) = reply.content
    _check_call(call.name, json.dumps(call.input))
    fmt = ask(output_config={"format": {"type": "json_schema", "schema": RESULT_SCHEMA}})
    assert fmt.stop_reason == "end_turn" and fmt.usage.output_tokens < MAX_TOKENS // 2
    jsonschema.validate(json.loads(fmt.content[0].text), RESULT_SCHEMA)


# --- item 7: a client that leaves never keeps a slot -------------------------------------------------------


def _metric(server, name: str) -> float:
    return server.metric(name)


def _wait_for(predicate, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_disconnects_are_cancelled_wherever_they_happen(server):
    """Fill every slot with endless streams, drop a queued request, then drop the streams mid-decode."""
    cancelled = _metric(server, "glm4_edge_generations_cancelled_total")
    long = {"model": "tiny", "messages": HELLO, "max_tokens": 4000, "temperature": 0, "ignore_eos": True,
            "stream": True}
    clients, streams = [], []
    for _ in range(server.concurrency):
        client = httpx.Client(base_url=server.base_url, timeout=60)
        response = client.send(client.build_request("POST", "/v1/chat/completions", json=long), stream=True)
        lines = response.iter_lines()  # kept: a line iterator closed early closes its connection
        assert next(line for line in lines if line.startswith("data: "))  # decoding now
        clients.append(client)
        streams.append((response, lines))
    _wait_for(lambda: _metric(server, "glm4_edge_requests_in_flight") == server.concurrency, "slots not full")

    # Queued: the client gives up before a slot frees.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/chat/completions", timeout=0.5,
                   json={"model": "tiny", "messages": ADD, "max_tokens": 5})
    _wait_for(lambda: _metric(server, "glm4_edge_generations_cancelled_total") == cancelled + 1,
              "a request dropped while queued was not counted cancelled")
    assert _metric(server, "glm4_edge_requests_queued") == 0

    # Decoding: every stream dropped; each counted, each slot freed, tokens stop growing.
    for (response, _), client in zip(streams, clients, strict=True):
        response.close()
        client.close()
    _wait_for(lambda: _metric(server, "glm4_edge_generations_cancelled_total") == cancelled + 1 + len(streams),
              "a stream dropped mid-decode was not counted cancelled")
    _wait_for(lambda: _metric(server, "glm4_edge_requests_in_flight") == 0, "a dropped stream kept its slot")
    tokens = _metric(server, "glm4_edge_generated_tokens_total")
    time.sleep(0.3)
    assert _metric(server, "glm4_edge_generated_tokens_total") == tokens

    # The next request starts at once.
    started = time.monotonic()
    reply = server.client().chat.completions.create(model="tiny", messages=ADD, max_tokens=5, temperature=0)
    assert reply.usage.completion_tokens >= 1 and time.monotonic() - started < 5



# --- the compact grammar itself --------------------------------------------------------------------------

GRAMMAR_SCHEMAS = [
    RESULT_SCHEMA,
    {"type": "object", "properties": {"a": {"type": "string", "maxLength": 4}, "b": {"type": "boolean"},
                                      "c": {"type": ["null", "number"]}}, "required": ["b"]},
    {"type": "object", "properties": {"a": {"type": "string", "maxLength": 3}},
     "additionalProperties": {"type": "integer"}},
    {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3},
    {"type": "array", "items": {"type": "string", "minLength": 2, "maxLength": 3}, "minItems": 3},
    {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}], "items": False},
    {"enum": ["red", "绿", 1, None, {"x": [1, 2]}]},
    {"const": "a\"b\\c\nd"},
    {"anyOf": [{"type": "string", "maxLength": 2}, {"type": "integer"}]},
    {"$defs": {"node": {"type": "object", "required": ["v", "next"], "properties": {
        "v": {"type": "integer"}, "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}}}},
     "$ref": "#/$defs/node"},
    {"type": "object", "properties": {"x": {"allOf": [{"type": "integer"}]}, "format": {"type": "boolean"}},
     "required": ["x", "format"], "additionalProperties": False},
]


def _padded(text: str) -> bool:
    """True when `text` has whitespace outside its strings other than one space after `,` or `:`."""
    in_string = escaped = False
    previous = ""
    for char in text:
        if in_string:
            escaped, in_string = (not escaped and char == "\\"), in_string and (escaped or char != '"')
        elif char == '"':
            in_string = True
        elif char.isspace() and (char != " " or previous not in (",", ":")):
            return True
        previous = char
    return False


def test_compact_grammars_compile_and_hold(tiny_chat):
    """Each schema compiles in xgrammar; every finished answer is compact and valid against its schema."""
    import glm4_edge
    from glm4_edge import json_grammar

    model = glm4_edge.load(tiny_chat)
    prompt = model.render(ADD)
    for schema in GRAMMAR_SCHEMAS:
        assert not json_grammar.needs_xgrammar(schema), schema
        chunks = list(model.stream_prompt(prompt, parse=False, json_schema=json.dumps(schema), max_new_tokens=60,
                                          temperature=0))
        text = "".join(c.text for c in chunks)
        if chunks[-1].finish_reason == "stop":
            value = json.loads(text)
            jsonschema.validate(value, schema)
            assert not _padded(text), text
    dated = {"type": "object", "properties": {"d": {"type": "string", "format": "date"}}, "required": ["d"]}
    assert json_grammar.needs_xgrammar(dated)
    # A tool xgrammar must compile beside one the compact grammar expresses: each keeps its own form.
    tools = json_grammar.ToolCallGrammar((("add", _schema("add")), ("when", dated)))
    chunks = list(model.stream_prompt(prompt, parse=False, json_schema=tools, max_new_tokens=60, temperature=0))
    name, _, arguments = "".join(c.text for c in chunks).partition("\n")
    if name == "add":
        assert chunks[-1].finish_reason == "stop" and not _padded(arguments)
        jsonschema.validate(json.loads(arguments), _schema("add"))
    else:
        assert name == "when"


# --- the Responses API (/v1/responses) --------------------------------------------------------------------


def test_every_responses_sdk_field_is_honoured_or_refused():
    from openai.types.responses import response_create_params as responses

    from glm4_edge import responses_request

    known = set(responses_request.HONOURED_FIELDS) | set(responses_request.INFORMATIONAL_FIELDS) | set(
        responses_request.REFUSED_FIELDS)
    fields: set[str] = set()
    for cls in (responses.ResponseCreateParamsStreaming, responses.ResponseCreateParamsNonStreaming):
        for base in cls.__mro__:
            fields |= set(getattr(base, "__annotations__", {}))
    assert "input" in fields and "max_output_tokens" in fields  # the SDK still types its parameters here
    assert fields - known == set(), "new OpenAI SDK fields: honour or refuse them in responses_request"
    # And the request model takes every honoured or informational one.
    from glm4_edge.responses_request import ResponsesBody

    accepted = set(ResponsesBody.model_fields)
    assert set(responses_request.HONOURED_FIELDS) | set(responses_request.INFORMATIONAL_FIELDS) <= accepted


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_responses_json_schema_format(server, stream):
    fmt = {"type": "json_schema", "name": "result", "schema": RESULT_SCHEMA, "strict": True}
    options = dict(model="tiny", input="What is 2 plus 3?", temperature=0, max_output_tokens=MAX_TOKENS,
                   text={"format": fmt})
    client = server.client()
    if stream:
        events = list(client.responses.create(**options, stream=True))
        assert events[-1].type == "response.completed"
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        response = events[-1].response
    else:
        response = client.responses.create(**options)
        text = response.output_text
    assert response.status == "completed" and response.text.format.type == "json_schema"
    jsonschema.validate(json.loads(text), RESULT_SCHEMA)
    assert text == response.output_text and not _padded(text)


def test_responses_required_tool_call(server):
    tools = [{"type": "function", "strict": True, **tool["function"]} for tool in TOOLS]
    response = server.client().responses.create(model="tiny", input="What is 2 plus 3?", tools=tools,
                                                tool_choice="required", temperature=0, max_output_tokens=MAX_TOKENS)
    (call,) = [item for item in response.output if item.type == "function_call"]
    _check_call(call.name, call.arguments)


def test_langchain_responses_api(server):
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", model="tiny", temperature=0,
                      max_tokens=MAX_TOKENS, max_retries=0, use_responses_api=True)
    message = chat.bind_tools(TOOLS, tool_choice="any").invoke("What is 2 plus 3?")
    (call,) = message.tool_calls
    _check_call(call["name"], json.dumps(call["args"]))
    short = ChatOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", model="tiny", temperature=0,
                       max_tokens=4, max_retries=0, use_responses_api=True)
    chunks = list(short.stream("Say hi"))  # the answer is longer than 4 tokens: the limit must cut it
    assert sum(c.usage_metadata["output_tokens"] for c in chunks if c.usage_metadata) == 4


def test_litellm_responses(server):
    import litellm

    response = litellm.responses(model="openai/tiny", api_base=f"{server.base_url}/v1", api_key="unused",
                                 input="What is 2 plus 3?", temperature=0, max_output_tokens=MAX_TOKENS,
                                 text={"format": {"type": "json_schema", "name": "r", "schema": RESULT_SCHEMA}})
    assert response.status == "completed" and response.usage.output_tokens < MAX_TOKENS // 2
    jsonschema.validate(json.loads(response.output[-1].content[0].text), RESULT_SCHEMA)


def test_openai_agents_runs_a_tool(server):
    """openai-agents' default model speaks the Responses API: one turn calls the tool, the agent runs it."""
    from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)  # tracing would export to OpenAI
    calls = []

    @function_tool
    def add(a: int, b: int) -> str:
        """Add two integers."""
        calls.append((a, b))
        return f"the sum is {a + b}"

    model = OpenAIResponsesModel(model="tiny", openai_client=openai.AsyncOpenAI(
        base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0))
    agent = Agent(name="adder", instructions="Add numbers with the add tool.", model=model, tools=[add],
                  tool_use_behavior="stop_on_first_tool",
                  model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=MAX_TOKENS))
    result = Runner.run_sync(agent, "What is 2 plus 3?")
    (call,) = calls
    assert result.final_output == f"the sum is {sum(call)}"
