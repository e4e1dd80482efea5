"""Chunked prefill of long prompts: progress, the same answer as one-shot prefill, cancel between chunks."""

from __future__ import annotations

import io
import threading

import pytest

from glm4_edge.prefill import CHUNK_ALIGN_TOKENS, PrefillProgress, chunk_ends

from .conftest import REASONING_ANSWER

LONG = "The quick brown fox jumps over the lazy dog. " * 30  # ~1,200 tokens on the tiny tokenizer


def test_chunks_are_block_aligned_and_sized_by_rate():
    assert chunk_ends(10_000, 1024, None, 0) == 1024
    assert chunk_ends(100_000, 1024, 1000.0, 1024) == 1024 + 2816  # ~3 s at 1,000 tok/s, aligned down
    assert chunk_ends(100_000, 1024, 1.0, 0) == CHUNK_ALIGN_TOKENS  # never below one aligned chunk
    assert chunk_ends(1100, 1024, None, 0) == 1100  # a remainder under one chunk goes to the real generate


def test_progress_summary_says_done_rate_and_time_left():
    progress = PrefillProgress(done=8192, total=32768, elapsed_s=4.0)
    assert progress.tokens_per_s == 2048 and progress.eta_s == 12.0
    assert progress.summary() == "reading the prompt: 8,192/32,768 tokens · 2,048 tok/s · 12 s left"


@pytest.fixture(scope="module")
def scripted(scripted_model):
    import glm4_edge

    model = glm4_edge.load(scripted_model)
    model.prefill_threshold, model.prefill_first_chunk, model.prefill_chunk_s = 256, CHUNK_ALIGN_TOKENS, 1e-6
    return model


def test_the_first_progress_update_comes_after_one_aligned_chunk(scripted_model):
    """Before any rate is known the first chunk is one aligned chunk: on GLM-4-9B on a 2-core CPU the
    former 1,024 tokens took ~40 s before the first update (24 tok/s), 256 take ~11 s."""
    import glm4_edge

    model = glm4_edge.load(scripted_model)
    model.prefill_threshold = 256  # the default first chunk and chunk time
    progress = [c.progress for c in model.stream(LONG, max_new_tokens=4) if c.progress is not None]
    assert progress and progress[0].done == CHUNK_ALIGN_TOKENS


def test_long_prompt_reports_progress_and_answers_the_same(scripted):
    chunks = list(scripted.stream(LONG, temperature=0.0, max_new_tokens=64))
    progress = [c.progress for c in chunks if c.progress is not None]
    total = chunks[-1].stats.prompt_tokens
    assert len(progress) >= 2 and all(p.total == total for p in progress)
    assert [p.done for p in progress] == sorted({p.done for p in progress})
    assert all(p.done % CHUNK_ALIGN_TOKENS == 0 for p in progress) and progress[-1].done < total
    assert "".join(c.text for c in chunks) == REASONING_ANSWER
    assert chunks[-1].stats.ttft_s >= progress[-1].elapsed_s  # TTFT counts the chunks


def test_short_prompts_are_not_chunked(scripted):
    assert all(c.progress is None for c in scripted.stream("hi", temperature=0.0))


def test_cancel_between_chunks(scripted):
    cancel = threading.Event()
    chunks = []
    for chunk in scripted.stream(LONG, temperature=0.0, cancel=cancel):
        chunks.append(chunk)
        if chunk.progress is not None:
            cancel.set()
    assert [c.progress is not None for c in chunks] == [True, False]
    assert chunks[-1].finish_reason == "cancelled" and not chunks[-1].text
    assert not scripted.busy
    assert scripted.generate("hi", temperature=0.0).text == REASONING_ANSWER  # the model is free again


def test_chunked_prefill_reuses_the_cache_correctly(tiny_int4):
    """A random model's greedy answer depends on every prompt token: chunks must leave the exact KV."""
    import glm4_edge

    model = glm4_edge.load(tiny_int4)
    model.prefill_threshold = 0
    one_shot = model.generate(LONG, temperature=0.0, max_new_tokens=24, ignore_eos=True).text
    model.prefill_threshold, model.prefill_first_chunk, model.prefill_chunk_s = 256, CHUNK_ALIGN_TOKENS, 1e-6
    chunks = list(model.stream(LONG, temperature=0.0, max_new_tokens=24, ignore_eos=True))
    assert sum(c.progress is not None for c in chunks) >= 2
    assert "".join(c.text for c in chunks) == one_shot


def test_cli_progress_line_is_rewritten_and_cleared():
    from glm4_edge.cli.documents import ProgressLine
    from glm4_edge.model import Chunk

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    line = ProgressLine(terminal)
    line.update(Chunk(progress=PrefillProgress(1024, 4096, 1.0)))
    line.update(Chunk(text="answer"))
    assert terminal.getvalue() == ("\r\033[2Kreading the prompt: 1,024/4,096 tokens · 1,024 tok/s · 3 s left"
                                   "\r\033[2K")


def test_u4_kv_cache_is_sized_at_load_and_prefilled_in_chunks(tiny_int4):
    """openvino-genai 2026.4.1 corrupts the heap regrowing a u4 KV cache (each chunk regrows a dynamic one:
    `malloc(): invalid size` on the 1-layer model, 4 of 4 runs). Sized at load, it never regrows."""
    import glm4_edge

    model = glm4_edge.load(tiny_int4, properties={"KV_CACHE_PRECISION": "u4"})
    assert model.kv_cache_fixed
    model.prefill_threshold, model.prefill_first_chunk, model.prefill_chunk_s = 256, CHUNK_ALIGN_TOKENS, 1e-6
    one_call = glm4_edge.load(tiny_int4, properties={"KV_CACHE_PRECISION": "u4"})
    one_call.prefill_threshold = 0
    expected = "".join(c.text for c in one_call.stream(LONG, temperature=0.0, max_new_tokens=8, ignore_eos=True))
    for question in ("", " Who jumps?", " Who jumps?"):  # a new prompt, then a reused prefix, twice
        chunks = list(model.stream(LONG + question, temperature=0.0, max_new_tokens=8, ignore_eos=True))
        assert any(c.progress is not None for c in chunks) and chunks[-1].finish_reason == "length"
        if not question:
            assert "".join(c.text for c in chunks) == expected
    model.kv_cache_fixed = False  # a u4 cache that could regrow: one call, no progress
    chunks = list(model.stream(LONG, temperature=0.0, max_new_tokens=8, ignore_eos=True))
    assert not any(c.progress is not None for c in chunks) and chunks[-1].finish_reason == "length"


def test_u4_kv_cache_serves_parallel_requests(tiny_int4):
    """The server's continuous-batching pipeline regrows its cache too (a segfault with 4 parallel u4
    requests on the 1-layer model); `load_batched` sizes a u4 cache for `max_concurrency` contexts."""
    from glm4_edge.batching import load_batched

    model = load_batched(tiny_int4, properties={"KV_CACHE_PRECISION": "u4"}, max_concurrency=4)
    finished: dict[int, str | None] = {}

    def ask(i: int) -> None:
        prompt = f"Request {i}. " + LONG[: 600 + 150 * i]
        chunks = list(model.stream(prompt, temperature=0.0, max_new_tokens=32, ignore_eos=True))
        finished[i] = chunks[-1].finish_reason

    try:
        for _ in range(2):
            threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
            assert finished == {i: "length" for i in range(4)}
            finished.clear()
    finally:
        model.close()


@pytest.mark.parametrize("properties", [{"KEY_CACHE_PRECISION": "u4", "VALUE_CACHE_PRECISION": "u4"},
                                        "openvino.Type.u4"], ids=["key-value", "ov-type"])
def test_u4_asked_any_way_is_sized_at_load(tiny_int4, properties):
    """OpenVINO also takes KEY_/VALUE_CACHE_PRECISION and `openvino.Type` values; each crashed unsized."""
    import openvino

    import glm4_edge
    from glm4_edge.errors import ContextOverflowError

    if properties == "openvino.Type.u4":
        properties = {"KV_CACHE_PRECISION": openvino.Type.u4}
    model = glm4_edge.load(tiny_int4, properties=properties)
    assert model.kv_cache_precision == "u4" and model.kv_cache_fixed
    model.prefill_threshold, model.prefill_first_chunk, model.prefill_chunk_s = 256, CHUNK_ALIGN_TOKENS, 1e-6
    for question in ("", " Who jumps?"):
        chunks = list(model.stream(LONG + question, temperature=0.0, max_new_tokens=8, ignore_eos=True))
        assert any(c.progress is not None for c in chunks) and chunks[-1].finish_reason == "length"
    # A context raised after load cannot pass the cache sized at load: one clear error, not OpenVINO's.
    model.context_length = 10 * model.kv_cache_tokens
    with pytest.raises(ContextOverflowError, match=f"context of {model.kv_cache_tokens} tokens"):
        list(model.stream(LONG * 20, max_new_tokens=8))


def test_an_unsupported_kv_precision_is_one_clear_line(tiny_int4):
    import subprocess

    from .conftest import CLI

    result = subprocess.run([*CLI, "generate", str(tiny_int4), "--property", "KV_CACHE_PRECISION=u3", "-p", "hi"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "KV cache precision u3 is not supported here; on the CPU use u8, u4, f16, bf16" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
