"""Finish reasons and generation options mean the same on every path: the Python API, the batch path,
`Chat`, parallel decoding (BatchedModel), the server in both modes and the CLI.

Real OpenVINO inference throughout: scripted checkpoints where the answer is known, the random tiny
INT4 model where an option has to change the answer (penalties, seed, top-k).
"""

from __future__ import annotations

import json
import threading

import pytest

import glm4_edge
from glm4_edge.batching import load_batched
from glm4_edge.errors import BadParameterError

from .conftest import FOUR_ANSWER, REASONING_ANSWER
from .test_convert import assert_one_line_error, run_cli
from .test_server import start_server, stop_server

GREEDY = {"temperature": 0.0}
HI = [{"role": "user", "content": "hi"}]
RAW_PROMPT = "[gMASK]<sop><|user|>\nhi<|assistant|>"
LONG = {"max_new_tokens": 24, "ignore_eos": True}  # the random model's answers, at a fixed length
SAMPLE = {"temperature": 1.0, "top_p": 1.0}
WEATHER = {"type": "function", "function": {"name": "get_weather",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}
SCHEMA = json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
ENGINES = ["one pipeline", "continuous batching"]


def _joined(chunks) -> tuple[str, str]:
    chunks = list(chunks)
    return "".join(c.text for c in chunks), chunks[-1].finish_reason


def answers(model, batched, messages=HI, **options) -> dict[str, tuple[str, str]]:
    """(text, finish_reason) from each Python path, on the same conversation and options."""
    out = {"Model.stream": _joined(model.stream(messages, **options))}
    reply = model.generate(messages, **options)
    out["Model.generate"] = (reply.text, reply.finish_reason)
    for index, reply in enumerate(model.generate_batch([messages, messages], **options)):
        out[f"Model.generate_batch[{index}]"] = (reply.text, reply.finish_reason)
    out["Chat.send"] = _joined(model.chat(**options).send(messages[-1]["content"]))
    out["BatchedModel.stream"] = _joined(batched.stream(messages, **options))
    reply = batched.generate_batch([messages], **options)[0]
    out["BatchedModel.generate_batch"] = (reply.text, reply.finish_reason)
    return out


def texts(model, batched, **options) -> set[str]:
    return {text for text, _ in answers(model, batched, **options).values()}


@pytest.fixture(scope="module")
def four(four_token_model):
    return glm4_edge.load(four_token_model)


@pytest.fixture(scope="module")
def four_batched(four_token_model):
    model = load_batched(four_token_model)
    yield model
    model.close()


@pytest.fixture(scope="module")
def tool_pair(tool_model):
    """The tool-calling checkpoint on one pipeline and on parallel decoding."""
    batched = load_batched(tool_model)
    yield glm4_edge.load(tool_model), batched
    batched.close()


@pytest.fixture(scope="module")
def noisy(tiny_int4):
    return glm4_edge.load(tiny_int4)


@pytest.fixture(scope="module")
def noisy_batched(tiny_int4):
    model = load_batched(tiny_int4)
    yield model
    model.close()


# --- finish reason (issue 12, item 3) -------------------------------------------------------------------


@pytest.mark.parametrize(("options", "text", "reason"), [
    ({"max_new_tokens": 5}, FOUR_ANSWER, "stop"),  # 4 tokens + end of turn: ended on the last allowed token
    ({"max_new_tokens": 6}, FOUR_ANSWER, "stop"),
    ({"max_new_tokens": 4}, FOUR_ANSWER, "length"),  # cut off just before the end of turn
    ({"max_new_tokens": 3}, "One two", "length"),
    ({"max_new_tokens": 4, "stop": [" three"]}, "One two", "stop"),  # a stop string on the last allowed token
    ({"max_new_tokens": 64, "stop": "two"}, "One ", "stop"),
    ({"max_new_tokens": 8, "ignore_eos": True}, FOUR_ANSWER, "length"),
])
def test_finish_reason_comes_from_what_ended_generation(four, four_batched, options, text, reason):
    got = answers(four, four_batched, **GREEDY, **options)
    assert got == dict.fromkeys(got, (text, reason))


@pytest.mark.parametrize("assist", ["draft", "prompt_lookup"])
def test_finish_reason_with_speculative_decoding(four_token_model, assist):
    options = {"draft": four_token_model} if assist == "draft" else {"prompt_lookup": True}
    model = glm4_edge.load(four_token_model, **options)
    for limit, reason in ((5, "stop"), (4, "length")):
        assert _joined(model.stream(HI, max_new_tokens=limit, **GREEDY)) == (FOUR_ANSWER, reason), limit


@pytest.fixture(scope="module", params=ENGINES)
def four_server(request, four_token_model, tmp_path_factory):
    args = ["--max-concurrency", "2"] if request.param == "continuous batching" else []
    server = start_server(four_token_model, tmp_path_factory.mktemp("serve") / "four.log", *args)
    assert request.param in server.log.read_text()
    yield server
    stop_server(server)


@pytest.mark.parametrize(("max_tokens", "reason"), [(5, "stop"), (4, "length")])
def test_server_finish_reason(four_server, max_tokens, reason):
    client, name = four_server.client(), four_server.model_name
    options = {"model": name, "temperature": 0, "max_tokens": max_tokens}
    chat = client.chat.completions.create(messages=HI, **options)
    assert chat.choices[0].message.content == FOUR_ANSWER
    chat_stream = client.chat.completions.create(messages=HI, stream=True, **options)
    raw = client.completions.create(prompt=RAW_PROMPT, **options)
    raw_stream = client.completions.create(prompt=RAW_PROMPT, stream=True, **options)
    streamed = [[c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason]
                for stream in (chat_stream, raw_stream)]
    assert [chat.choices[0].finish_reason, raw.choices[0].finish_reason, *streamed] == [
        reason, reason, [reason], [reason]]


def test_cli_finish_reason(four_token_model, tmp_path):
    result = run_cli("generate", str(four_token_model), "-p", "hi", "--json", "--temperature", "0",
                     "--max-new-tokens", "5")
    assert result.returncode == 0, result.stderr
    assert (json.loads(result.stdout)["text"], json.loads(result.stdout)["finish_reason"]) == (FOUR_ANSWER, "stop")
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(json.dumps({"prompt": "hi"}) + "\n")
    for limit, reason in (("5", "stop"), ("4", "length")):
        out.unlink(missing_ok=True)
        result = run_cli("generate", str(four_token_model), "--batch", str(source), "-o", str(out),
                         "--temperature", "0", "--max-new-tokens", limit)
        assert result.returncode == 0, result.stderr
        assert json.loads(out.read_text())["finish_reason"] == reason


# --- every option on every path (issue 12, item 7) ------------------------------------------------------


def test_each_option_changes_the_answer_the_same_way_on_every_python_path(noisy, noisy_batched):
    greedy = texts(noisy, noisy_batched, **LONG, **GREEDY)
    assert len(greedy) == 1
    for option in ({"repetition_penalty": 1.5}, {"presence_penalty": 2.0}, {"frequency_penalty": 2.0}):
        changed = texts(noisy, noisy_batched, **LONG, **GREEDY, **option)
        assert len(changed) == 1 and changed != greedy, option
    seeded = texts(noisy, noisy_batched, **LONG, **SAMPLE, seed=7)
    assert len(seeded) == 1 and seeded != greedy
    other_seed = texts(noisy, noisy_batched, **LONG, **SAMPLE, seed=8)
    assert len(other_seed) == 1 and other_seed != seeded
    # A negative seed (OpenAI's are signed) is the same seed everywhere too.
    assert len(texts(noisy, noisy_batched, **LONG, **SAMPLE, seed=-7)) == 1
    assert texts(noisy, noisy_batched, **LONG, **SAMPLE, top_k=1, seed=9) == greedy  # top-1 sampling is greedy


def test_sampling_without_a_seed_draws_a_new_one_for_each_answer(noisy, noisy_batched):
    for model in (noisy, noisy_batched):
        first, second = (model.generate(HI, **LONG, **SAMPLE).text for _ in range(2))
        assert first != second
        batch = model.generate_batch([HI, HI], **LONG, **SAMPLE)
        assert batch[0].text != first


def test_stop_strings_tools_and_json_schema_on_every_python_path(scripted_model, tool_pair):
    scripted, scripted_batched = glm4_edge.load(scripted_model), load_batched(scripted_model)
    try:
        got = answers(scripted, scripted_batched, **GREEDY, max_new_tokens=64, stop=[" STOP"])
        assert got == dict.fromkeys(got, (REASONING_ANSWER.split(" STOP")[0], "stop"))
        schema_answers = [scripted.generate(HI, json_schema=SCHEMA, max_new_tokens=40, **GREEDY).text,
                          *[r.text for r in scripted.generate_batch([HI], json_schema=SCHEMA, max_new_tokens=40,
                                                                    **GREEDY)],
                          scripted_batched.generate(HI, json_schema=SCHEMA, max_new_tokens=40, **GREEDY).text]
        # Compact JSON (json_grammar): the scripted model's free answer only reached 42 through
        # whitespace padding, so what is checked is a schema-valid object, the same on every path.
        parsed = [json.loads(text) for text in schema_answers]
        assert all(set(p) == {"a"} and isinstance(p["a"], int) for p in parsed) and len({str(p) for p in parsed}) == 1
        assert not any("\n" in text for text in schema_answers)
    finally:
        scripted_batched.close()
    tools, tools_batched = tool_pair
    got = answers(tools, tools_batched, **GREEDY, tools=[WEATHER])
    assert got == dict.fromkeys(got, ("", "tool_calls"))
    call = {"name": "get_weather", "arguments": '{"city": "Beijing"}'}
    assert tools.generate_batch([HI], tools=[WEATHER], **GREEDY)[0].tool_calls == [call]
    assert tools_batched.generate(HI, tools=[WEATHER], **GREEDY).tool_calls == [call]


@pytest.mark.parametrize("choice", ["required", "get_weather",
                                    {"type": "function", "function": {"name": "get_weather"}}])
def test_tool_choice_forces_the_call_on_every_python_path(tool_pair, choice):
    tools, tools_batched = tool_pair
    got = answers(tools, tools_batched, **GREEDY, tools=[WEATHER], tool_choice=choice)
    assert got == dict.fromkeys(got, ("", "tool_calls"))
    call = {"name": "get_weather", "arguments": '{"city": "Beijing"}'}
    replies = [tools.generate(HI, tools=[WEATHER], tool_choice=choice, **GREEDY),
               *tools.generate_batch([HI], tools=[WEATHER], tool_choice=choice, **GREEDY),
               tools_batched.generate(HI, tools=[WEATHER], tool_choice=choice, **GREEDY)]
    assert [json.loads(r.tool_calls[0]["arguments"]) for r in replies] == [{"city": "Beijing"}] * 3
    assert {r.tool_calls[0]["name"] for r in replies} == {call["name"]}


@pytest.mark.parametrize("choice", ["required", "get_weather"])
def test_forced_tool_call_cut_by_max_new_tokens_on_every_python_path(tool_pair, choice):
    """As the server answers it (test_server.py): finish_reason "length" and the partial call, no raw text."""
    tools, tools_batched = tool_pair
    options = dict(GREEDY, tools=[WEATHER], tool_choice=choice, max_new_tokens=2)
    got = answers(tools, tools_batched, **options)
    assert got == dict.fromkeys(got, ("", "length"))
    replies = [tools.generate(HI, **options), *tools.generate_batch([HI], **options),
               tools_batched.generate(HI, **options), *tools_batched.generate_batch([HI], **options)]
    for reply in replies:
        (call,) = reply.tool_calls
        assert call["name"] == "get_weather" and call["arguments"].startswith("{")
        with pytest.raises(ValueError):  # two tokens of the arguments: not whole JSON yet
            json.loads(call["arguments"])


def test_tool_choice_none_hides_the_tools_on_every_python_path(tool_pair):
    got = answers(*tool_pair, **GREEDY, tools=[WEATHER], tool_choice="none")
    assert got == dict.fromkeys(got, ('get_weather\n{"city": "Beijing"}', "stop"))  # only text now


@pytest.mark.parametrize(("options", "param"), [
    ({"tool_choice": "get_time"}, "tool_choice"),
    ({"tool_choice": "bogus"}, "tool_choice"),
    ({"tool_choice": "required", "json_schema": SCHEMA}, "json_schema"),
])
def test_bad_tool_choice_is_refused_by_name_on_every_python_path(tool_pair, options, param):
    tools, tools_batched = tool_pair
    for attempt in (lambda: tools.stream(HI, tools=[WEATHER], **options),
                    lambda: tools.generate_batch([HI], tools=[WEATHER], **options),
                    lambda: tools_batched.stream(HI, tools=[WEATHER], **options)):
        with pytest.raises(BadParameterError) as caught:
            attempt()
        assert caught.value.param == param


@pytest.mark.parametrize(("options", "param"), [
    ({"temprature": 0.5}, "temprature"),  # a misspelt option is named, never ignored
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"seed": 1.5}, "seed"),
    ({"stop": [1]}, "stop"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
])
def test_bad_options_are_refused_by_name_on_every_python_path(four, four_batched, options, param):
    attempts = {
        "Model.stream": lambda: four.stream(HI, **options),
        "Model.generate_batch": lambda: four.generate_batch([HI], **options),
        "Model.chat": lambda: four.chat(**options),
        "BatchedModel.stream": lambda: four_batched.stream(HI, **options),
        "BatchedModel.generate_batch": lambda: four_batched.generate_batch([HI], **options),
    }
    for path, attempt in attempts.items():
        with pytest.raises(BadParameterError) as caught:
            attempt()
        assert caught.value.param == param and param in str(caught.value), path


def test_batch_refuses_cancel_by_name(four, four_batched):
    for model in (four, four_batched):
        with pytest.raises(BadParameterError, match="cancel") as caught:
            model.generate_batch([HI], cancel=threading.Event())
        assert caught.value.param == "cancel"


@pytest.fixture(scope="module", params=ENGINES)
def noisy_server(request, tiny_int4, tmp_path_factory):
    args = ["--max-concurrency", "2"] if request.param == "continuous batching" else []
    server = start_server(tiny_int4, tmp_path_factory.mktemp("serve") / "noisy.log", *args)
    assert request.param in server.log.read_text()
    yield server
    stop_server(server)


def test_server_options_mean_what_they_mean_to_the_python_api(noisy_server, noisy):
    def served(**options) -> str:
        body = {"messages": HI, "max_tokens": LONG["max_new_tokens"], "ignore_eos": True, **options}
        with noisy_server.http() as http:
            response = http.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]

    for options in (GREEDY, {**GREEDY, "repetition_penalty": 1.5}, {**GREEDY, "presence_penalty": 2.0},
                    {**GREEDY, "frequency_penalty": 2.0}, {**SAMPLE, "seed": 7}, {**SAMPLE, "seed": -7},
                    {**SAMPLE, "top_k": 1, "seed": 3}):
        assert served(**options) == noisy.generate(HI, **LONG, **options).text, options
    assert served(**SAMPLE) != served(**SAMPLE)  # no seed: a fresh one for each request


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", {"prompt": "x", "tools": [WEATHER]}, "tools"),
    ("/v1/completions", {"prompt": "x", "tool_choice": "none"}, "tool_choice"),
    ("/v1/chat/completions", {"messages": HI, "min_p": 0.1}, "min_p"),
    ("/v1/chat/completions", {"messages": HI, "top_k": -1}, "top_k"),
    ("/v1/chat/completions", {"messages": HI, "temperature": 2.5}, "temperature"),
    ("/v1/chat/completions", {"messages": HI, "stop": ["x"] * 17}, "stop"),
    ("/v1/chat/completions", {"messages": HI, "tools": [WEATHER], "tool_choice": "required",
                              "response_format": {"type": "json_object"}}, "response_format"),
])
def test_server_refuses_what_it_cannot_honour_by_name(noisy_server, path, body, param):
    with noisy_server.http() as http:
        response = http.post(path, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_cli_flags_reach_the_model_with_the_same_meaning(tiny_int4, noisy):
    flags = {"temperature": 1.0, "top_p": 0.9, "top_k": 50, "seed": 5, "repetition_penalty": 1.2,
             "presence_penalty": 1.0, "frequency_penalty": 0.5, "max_new_tokens": 16}
    args = [item for name, value in flags.items() for item in (f"--{name.replace('_', '-')}", str(value))]
    result = run_cli("generate", str(tiny_int4), "-p", "hi", "--json", *args)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["text"] == noisy.generate(HI, **flags).text


def test_cli_batch_honours_stop_strings_and_tools(scripted_model, tool_model, tmp_path):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(json.dumps({"prompt": "hi"}) + "\n")
    result = run_cli("generate", str(scripted_model), "--batch", str(source), "-o", str(out), "--temperature", "0",
                     "--stop", " STOP")
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["text"] == REASONING_ANSWER.split(" STOP")[0]
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([WEATHER]))
    out.unlink()
    result = run_cli("generate", str(tool_model), "--batch", str(source), "-o", str(out), "--temperature", "0",
                     "--tools", str(tools))
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    assert record["finish_reason"] == "tool_calls" and record["tool_calls"][0]["name"] == "get_weather"
    result = run_cli("generate", str(tool_model), "-p", "hi", "--json", "--temperature", "0", "--tools", str(tools))
    assert json.loads(result.stdout)["tool_calls"] == [{"name": "get_weather", "arguments": '{"city": "Beijing"}'}]


@pytest.mark.parametrize(("args", "words"), [
    (["--top-k", "-1"], ["--top-k", "top_k"]),
    (["--presence-penalty", "3"], ["--presence-penalty"]),
    (["--temperature", "2.5"], ["--temperature"]),
    (["--tools", "/nonexistent.json"], ["--tools", "cannot read"]),
])
def test_cli_refuses_bad_options_before_loading(args, words):
    result = run_cli("generate", "/no/model/needed", "-p", "x", *args)
    assert_one_line_error(result, *words)

