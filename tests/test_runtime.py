"""The public API on real OpenVINO inference: streaming, stops, cancellation, reasoning, tools, errors."""

from __future__ import annotations

import json
import threading
import time

import pytest

import glm4_edge
from glm4_edge import devices
from glm4_edge.errors import (
    BadParameterError,
    ContextOverflowError,
    DeviceError,
    ModelFormatError,
)
from glm4_edge.manifest import read_manifest

from .conftest import REASONING_ANSWER, REASONING_THOUGHT

GREEDY = {"temperature": 0.0}
WEATHER = {"type": "function", "function": {"name": "get_weather",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def scripted(scripted_model):
    return glm4_edge.load(scripted_model)


@pytest.fixture(scope="module")
def looping(loop_model):
    return glm4_edge.load(loop_model)


@pytest.fixture(scope="module")
def tools(tool_model):
    return glm4_edge.load(tool_model)


def test_stream_contract(scripted):
    chunks = list(scripted.stream([{"role": "user", "content": "Hello"}], max_new_tokens=64, **GREEDY))
    assert all(c.finish_reason is None and c.stats is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.finish_reason == "stop"
    assert "".join(c.text for c in chunks) == REASONING_ANSWER
    assert "".join(c.reasoning for c in chunks) == REASONING_THOUGHT
    stats = last.stats
    assert stats.prompt_tokens > 0 and stats.generated_tokens >= 13
    assert stats.ttft_s > 0 and stats.tokens_per_s > 0 and stats.peak_memory_bytes > 0
    assert stats.device == "CPU" and stats.load_s > 0
    reply = scripted.generate("Hello", max_new_tokens=64, **GREEDY)
    assert (reply.text, reply.reasoning, reply.finish_reason) == (REASONING_ANSWER, REASONING_THOUGHT, "stop")


def test_multibyte_character_split_across_tokens_is_never_split(scripted, scripted_model):
    # The script emits 你 as its three single-byte tokens, each undecodable alone.
    from glm4_edge.convert.synthetic import _byte_decoder

    to_char = {byte: char for char, byte in _byte_decoder().items()}
    vocab = json.loads((scripted_model / "tokenizer.json").read_text())["model"]["vocab"]
    ids = [vocab[to_char[byte]] for byte in "你".encode()]
    assert scripted.tokenizer.decode(ids) == "你"
    assert all(scripted.tokenizer.decode([i]) != "你" for i in ids)
    chunks = [c.text for c in scripted.stream("x", max_new_tokens=64, **GREEDY)]
    assert not any("\ufffd" in c for c in chunks)
    assert any("你" in c for c in chunks)
    assert not any(tag in c for c in chunks for tag in ("<|", "|>", "<think>", "</think>"))


@pytest.mark.parametrize("stop,expected", [([" STOP"], "答案你 is 42."), (["42. S"], "答案你 is "),
                                           ("你", "答案"), (["never"], REASONING_ANSWER)])
def test_stop_strings_never_leak(scripted, stop, expected):
    chunks = list(scripted.stream("x", max_new_tokens=64, stop=stop, **GREEDY))
    assert "".join(c.text for c in chunks) == expected
    assert chunks[-1].finish_reason == "stop"


def test_length_limit(looping):
    reply = looping.generate("x", max_new_tokens=7, **GREEDY)
    assert reply.finish_reason == "length" and reply.stats.generated_tokens == 7
    assert reply.text.startswith("tick tock 滴答")


def test_break_stops_generation_and_frees_the_model(looping):
    started = time.perf_counter()
    stream = looping.stream("x", max_new_tokens=4000, **GREEDY)
    for index, _ in enumerate(stream):
        if index == 3:
            break
    stream.close()
    assert time.perf_counter() - started < 10
    assert not looping.busy
    reply = looping.generate("x", max_new_tokens=5, **GREEDY)  # usable at once
    assert reply.stats.generated_tokens == 5


def test_cancel_event_from_another_thread(looping):
    cancel = threading.Event()
    seen = 0
    last = None
    for chunk in looping.stream("x", max_new_tokens=4000, cancel=cancel, **GREEDY):
        seen += 1
        if seen == 5:
            cancel.set()
        last = chunk
    assert last.finish_reason == "cancelled"
    # The generation thread may run a few tokens ahead of this loop, never far.
    assert last.stats.generated_tokens < 64


def test_reasoning_when_template_opens_think(z1_model):
    model = glm4_edge.load(z1_model)
    assert model.starts_in_reasoning
    reply = model.generate("hi", **GREEDY)
    assert (reply.reasoning, reply.text) == ("让我想想", "Done!")


def test_chat_records_turns_without_thinking(scripted):
    chat = scripted.chat(system="Be brief.", max_new_tokens=64, **GREEDY)
    for _ in chat.send("first"):
        pass
    assert chat.messages[-1] == {"role": "assistant", "content": REASONING_ANSWER}
    assert chat.last_stats and chat.last_stats.generated_tokens > 0
    list(chat.send("second"))
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant", "user", "assistant"]
    prompt = scripted.render(chat.messages)
    assert REASONING_THOUGHT not in prompt
    chat.reset()
    assert chat.messages == [{"role": "system", "content": "Be brief."}]


def test_tool_call_round_trip(tools):
    reply = tools.generate("Weather in Beijing?", tools=[WEATHER], **GREEDY)
    assert reply.finish_reason == "tool_calls" and reply.text == ""
    assert reply.tool_calls == [{"name": "get_weather", "arguments": '{"city": "Beijing"}'}]
    plain = tools.generate("Weather in Beijing?", **GREEDY)  # no tools offered: it is only text
    assert plain.finish_reason == "stop" and plain.text == 'get_weather\n{"city": "Beijing"}'
    chat = tools.chat(tools=[WEATHER], **GREEDY)
    list(chat.send("Weather in Beijing?"))
    assert chat.messages[-1]["tool_calls"][0]["function"]["name"] == "get_weather"
    chat.add_tool_result({"temperature": 25})
    prompt = tools.render(chat.messages, [WEATHER])
    # GLM-4-0414's template writes a space after the name of an earlier call.
    assert prompt.endswith('<|assistant|>get_weather \n{"city": "Beijing"}<|observation|>\n{"temperature": 25}'
                           "<|assistant|>")
    list(chat.send(None))
    assert chat.messages[-1]["role"] == "assistant"


def test_context_overflow_names_both_numbers(scripted):
    with pytest.raises(ContextOverflowError) as error:
        scripted.stream("hello " * 50, max_new_tokens=scripted.context_length)
    message = str(error.value)
    assert str(error.value.prompt_tokens) in message and str(scripted.context_length) in message


def test_chat_trims_history_when_asked(scripted):
    unit = "hello world "
    long_text = unit * (scripted.context_length // 3 // scripted.count_tokens(unit))  # a third of the context
    chat = scripted.chat(max_new_tokens=64, **GREEDY)
    list(chat.send(long_text))
    list(chat.send(long_text))
    with pytest.raises(ContextOverflowError):
        list(chat.send(long_text + long_text))
    assert chat.messages[-1]["role"] == "assistant"  # the refused turn is not kept
    trimming = scripted.chat(max_new_tokens=64, trim_history=True, **GREEDY)
    for _ in range(4):
        list(trimming.send(long_text))
    assert trimming.messages.count({"role": "assistant", "content": REASONING_ANSWER}) < 4


@pytest.mark.parametrize("option", [{"temperature": -1}, {"top_p": 0}, {"max_new_tokens": 0},
                                    {"repetition_penalty": 0}, {"presence_penalty": 3}])
def test_bad_parameters(scripted, option):
    with pytest.raises(BadParameterError):
        list(scripted.stream("x", **option))


def test_missing_devices_are_clear_errors(scripted_model):
    for device in ("NPU", "GPU", "GPU.1", "AUTO:NPU"):
        with pytest.raises(DeviceError, match="available: CPU"):
            glm4_edge.load(scripted_model, device=device)


def test_auto_device_works(scripted_model):
    model = glm4_edge.load(scripted_model, device="AUTO")
    assert model.generate("x", max_new_tokens=64, **GREEDY).text == REASONING_ANSWER


def test_npu_refuses_a_model_not_compressed_for_it(tiny_int4):
    with pytest.raises(ModelFormatError, match="--device npu"):
        devices.pipeline_properties("NPU", read_manifest(tiny_int4), tiny_int4)


def test_npu_static_shapes_from_manifest_or_flags(workdir, tiny_int4):
    manifest = read_manifest(tiny_int4)
    manifest.target_device = "npu"
    manifest.npu = {"max_prompt_len": 2048, "min_response_len": 128}
    props = devices.pipeline_properties("NPU", manifest, tiny_int4)
    assert props["MAX_PROMPT_LEN"] == 2048 and props["MIN_RESPONSE_LEN"] == 128 and "CACHE_DIR" in props
    props = devices.pipeline_properties("NPU", manifest, tiny_int4, max_prompt_len=512)
    assert props["MAX_PROMPT_LEN"] == 512
    assert "CACHE_DIR" in devices.pipeline_properties("GPU", manifest, tiny_int4)
    assert "CACHE_DIR" not in devices.pipeline_properties("CPU", manifest, tiny_int4)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ModelFormatError, match="glm4-edge convert"):
        glm4_edge.load(tmp_path)
    with pytest.raises(ModelFormatError, match="no such model folder"):
        glm4_edge.load(tmp_path / "missing")


def test_random_int4_model_generates(tiny_int4):
    model = glm4_edge.load(tiny_int4, warm_up=True)
    reply = model.generate("你好", max_new_tokens=12, ignore_eos=True, seed=1)
    assert reply.stats.generated_tokens == 12 and reply.finish_reason == "length"


def test_batch_generation(scripted):
    replies = scripted.generate_batch(["a", [{"role": "user", "content": "a longer question here"}]],
                                      max_new_tokens=64, **GREEDY)
    assert [r.text for r in replies] == [REASONING_ANSWER] * 2
    assert [r.reasoning for r in replies] == [REASONING_THOUGHT] * 2


@pytest.mark.parametrize("assist", [{"draft": "self"}, {"prompt_lookup": True}])
def test_speculative_decoding_keeps_the_answer(scripted_model, assist):
    if assist.get("draft") == "self":
        assist = {"draft": scripted_model}  # the same network as its own draft: every guess is accepted
    model = glm4_edge.load(scripted_model, **assist)
    chunks = list(model.stream(REASONING_ANSWER, max_new_tokens=64, **GREEDY))
    assert "".join(c.text for c in chunks) == REASONING_ANSWER
    assert "".join(c.reasoning for c in chunks) == REASONING_THOUGHT
    assert chunks[-1].finish_reason == "stop"


def test_draft_and_prompt_lookup_together_are_refused(scripted_model):
    with pytest.raises(BadParameterError, match="not both"):
        glm4_edge.load(scripted_model, draft=scripted_model, prompt_lookup=True)


def test_cpu_gets_the_measured_dynamic_quantization_group_unless_the_user_says_otherwise(scripted_model):
    from glm4_edge.model import plan_load

    key = "DYNAMIC_QUANTIZATION_GROUP_SIZE"
    assert plan_load(scripted_model, "CPU").properties[key] == devices.CPU_DYNAMIC_QUANTIZATION_GROUP
    assert plan_load(scripted_model, "CPU", properties={key: 4096}).properties[key] == 4096


def test_context_of_a_folder_without_manifest_counts_yarn(tmp_path):
    """A model exported by another tool: the window is what its RoPE supports, YaRN included."""
    from glm4_edge.loading import _config_context

    config = {"max_position_embeddings": 32768,
              "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert _config_context(tmp_path) == 131072
    (tmp_path / "config.json").write_text(json.dumps({"seq_length": 8192}))
    assert _config_context(tmp_path) == 8192
