"""GLM-4 prompt, stop strings, reasoning split and tool calls on plain text (no model)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glm4_edge.errors import BadParameterError
from glm4_edge.glm_format import (
    ReplyParser,
    StopMatcher,
    parse_tool_calls,
    render_prompt,
    split_reasoning,
)

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}


def test_prompt_layout():
    prompt = render_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "你好"}])
    assert prompt == ("[gMASK]<sop><|system|>\nBe brief.<|user|>\nHi<|assistant|>\nHello!<|user|>\n你好"
                      "<|assistant|>")
    assert render_prompt("Hi") == "[gMASK]<sop><|user|>\nHi<|assistant|>"
    assert render_prompt("Hi", generation_prefix="<|assistant|>\n<think>").endswith("<|assistant|>\n<think>")


def test_history_drops_earlier_thinking():
    prompt = render_prompt([{"role": "user", "content": "1+1?"},
                            {"role": "assistant", "content": "<think>add them</think>2"},
                            {"role": "user", "content": "2+2?"}])
    assert "add them" not in prompt and "<|assistant|>\n2<|user|>" in prompt


def test_tools_and_tool_results():
    messages = [{"role": "system", "content": "You help."}, {"role": "user", "content": "Weather in Beijing?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "c1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Beijing"}'}}]},
                {"role": "tool", "content": '{"temp": 25}'}]
    prompt = render_prompt(messages, tools=[WEATHER])
    assert prompt.startswith("[gMASK]<sop><|system|>\nYou help.\n\n# 可用工具\n\n## get_weather\n\n{")
    assert prompt.count("<|system|>") == 1
    assert '"description": "Weather of a city"' in prompt
    assert prompt.endswith('<|user|>\nWeather in Beijing?<|assistant|>get_weather\n{"city": "Beijing"}'
                           '<|observation|>\n{"temp": 25}<|assistant|>')


@pytest.mark.parametrize("bad", [[], [{"content": "x"}], [{"role": "robot", "content": "x"}],
                                 [{"role": "user", "content": 3}], "x" and 5])
def test_bad_messages(bad):
    with pytest.raises(BadParameterError):
        render_prompt(bad)


def test_bad_tools():
    with pytest.raises(BadParameterError):
        render_prompt("x", tools=[{"type": "function", "function": {"description": "no name"}}])


def test_stop_matcher_holds_back_partial_stop():
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("Hello ST") == "Hello "
    assert matcher.feed("O") == ""
    assert matcher.feed("P and more") == ""
    assert matcher.stopped


def test_stop_matcher_releases_false_alarm():
    matcher = StopMatcher(["STOP", "\n\n"])
    assert matcher.feed("ST") == ""
    assert matcher.feed("AR\n") == "STAR"
    assert matcher.flush() == "\n"
    assert not matcher.stopped


def test_stop_matcher_first_of_several():
    matcher = StopMatcher(["b", "a"])
    assert matcher.feed("xxab") == "xx"


def test_reply_parser_plain_answer():
    parser = ReplyParser()
    pieces = [parser.feed(t) for t in ["\n", "Hel", "lo"]]
    rest, calls = parser.finish()
    assert "".join(p.text for p in pieces) + rest.text == "Hello"
    assert not calls


def test_reply_parser_reasoning_split_across_chunks():
    parser = ReplyParser()
    chunks = ["\n<th", "ink>let me ", "think</th", "ink>The answer", " is 4."]
    pieces = [parser.feed(t) for t in chunks]
    rest, _ = parser.finish()
    assert "".join(p.reasoning for p in pieces) + rest.reasoning == "let me think"
    assert "".join(p.text for p in pieces) + rest.text == "The answer is 4."
    assert all("<" not in p.text + p.reasoning for p in pieces)


def test_reply_parser_starts_in_reasoning():
    assert split_reasoning("hmm</think>\nOK", starts_in_reasoning=True) == ("hmm", "OK")
    assert split_reasoning("unfinished thought", starts_in_reasoning=True) == ("unfinished thought", "")


def test_reply_parser_tool_call():
    parser = ReplyParser(tool_names=["get_weather"])
    for piece in ["get_", "weather\n", '{"city"', ': "Beijing"}']:
        assert parser.feed(piece).text == ""
    rest, calls = parser.finish()
    assert rest.text == ""
    assert [c.as_dict() for c in calls] == [{"name": "get_weather", "arguments": '{"city": "Beijing"}'}]


def test_reply_parser_text_that_only_looks_like_a_tool():
    parser = ReplyParser(tool_names=["get_weather"])
    text = parser.feed("get").text + parser.feed("ting there\nis easy").text
    rest, calls = parser.finish()
    assert text + rest.text == "getting there\nis easy" and not calls
    parser = ReplyParser(tool_names=["get_weather"])
    text = parser.feed("get_weather\nnot json").text
    rest, calls = parser.finish()
    assert text + rest.text == "get_weather\nnot json" and not calls


def test_parse_several_tool_calls():
    calls = parse_tool_calls('a\n{"x": 1}\nb\n{"y": [1, 2]}', ["a", "b"])
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("a", {"x": 1}), ("b", {"y": [1, 2]})]
    assert parse_tool_calls('c\n{"x": 1}', ["a"]) == []
    assert parse_tool_calls("a\n[1]", ["a"]) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=40), st.booleans())
def test_any_chunking_gives_the_same_split(cuts, reasoning):
    text = "\n<think>思考 a bit</think>答案是 42.\n\nSTOP then more" if reasoning else "\n你好, world STOP x"
    pieces, position = [], 0
    for cut in cuts:
        pieces.append(text[position:position + cut])
        position += cut
    pieces.append(text[position:])
    matcher, parser = StopMatcher(["STOP"]), ReplyParser()
    out_text, out_reasoning = [], []
    for piece in pieces:
        parsed = parser.feed(matcher.feed(piece))
        out_text.append(parsed.text)
        out_reasoning.append(parsed.reasoning)
    rest, _ = parser.finish()
    whole_reasoning, whole_text = split_reasoning(text.split("STOP")[0])
    assert "".join(out_text) + rest.text == whole_text
    assert "".join(out_reasoning) + rest.reasoning == whole_reasoning
