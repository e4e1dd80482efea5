"""Runtime benchmarks from the runtime issue, on a GLM-4-9B-shaped INT4 model.

    python benchmarks/runtime.py overhead MODEL    # model.stream tokens/s vs raw LLMPipeline.generate
    python benchmarks/runtime.py kv-reuse MODEL    # turn-5 TTFT after 4 turns vs turn-1 TTFT

MODEL is a converted folder, e.g. the one `benchmarks/convert_memory.py --layers 8` leaves behind with
--keep, or any real GLM-4 model. Runs alternate and prompts vary, so the prefix cache cannot fake TTFT.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import openvino_genai

import glm4_edge
from glm4_edge import prompting

WORDS = ("alpha beta gamma delta model token cache stream answer history system user reply quick brown fox "
         "jumps over lazy dog river mountain city light sound water stone green blue").split()


def words_text(tokens: int, seed: int, model: glm4_edge.Model) -> str:
    """Random words, about `tokens` tokens long in this model's vocabulary."""
    rng = random.Random(seed)
    text = ""
    while model.count_tokens(text) < tokens:
        text += " ".join(rng.choice(WORDS) for _ in range(16)) + " "
    return text


def overhead(model_dir: Path, runs: int, gen_tokens: int) -> dict:
    model = glm4_edge.load(model_dir)
    raw = model.pipeline
    results: dict[str, list[float]] = {"raw": [], "stream": []}
    for run in range(runs + 1):  # the first round warms up and is dropped
        prompt = words_text(128, run, model)
        for engine in ("raw", "stream") if run % 2 == 0 else ("stream", "raw"):
            if engine == "raw":
                config = raw.get_generation_config()
                config.max_new_tokens, config.ignore_eos, config.do_sample = gen_tokens, True, False
                ids = prompting.token_inputs([model.encode(model.render(prompt + engine))])
                result = raw.generate(ids, config, lambda text: openvino_genai.StreamingStatus.RUNNING)
                rate = 1000.0 / result.perf_metrics.get_tpot().mean
            else:
                chunks = list(model.stream(prompt + engine, max_new_tokens=gen_tokens, ignore_eos=True,
                                           temperature=0))
                rate = chunks[-1].stats.tokens_per_s
            if run:
                results[engine].append(rate)
    raw_rate, stream_rate = statistics.median(results["raw"]), statistics.median(results["stream"])
    return {"raw_tokens_per_s": round(raw_rate, 2), "stream_tokens_per_s": round(stream_rate, 2),
            "ratio": round(stream_rate / raw_rate, 3), "runs": runs, "gen_tokens": gen_tokens}


def kv_reuse(model_dir: Path, turns: int, turn_tokens: int, final_tokens: int, answer_tokens: int) -> dict:
    model = glm4_edge.load(model_dir)
    options = {"max_new_tokens": answer_tokens, "ignore_eos": True, "temperature": 0}
    model.generate("warm up", **options)
    first = []
    for seed in range(3):  # turn 1 with a message as long as the final one, fresh each time
        chunks = list(model.chat().send(words_text(final_tokens, 1000 + seed, model), **options))
        first.append(chunks[-1].stats.ttft_s)
    chat = model.chat()
    ttfts = []
    for turn in range(turns):
        chunks = list(chat.send(words_text(turn_tokens, 2000 + turn, model), **options))
        ttfts.append(chunks[-1].stats.ttft_s)
    chunks = list(chat.send(words_text(final_tokens, 3000, model), **options))
    final = chunks[-1].stats
    turn1 = statistics.median(first)
    return {"turn1_ttft_s": round(turn1, 4), "final_turn_ttft_s": round(final.ttft_s, 4),
            "final_turn_prompt_tokens": final.prompt_tokens, "ratio": round(final.ttft_s / turn1, 3),
            "history_turn_ttft_s": [round(t, 4) for t in ttfts]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    over = sub.add_parser("overhead")
    over.add_argument("model", type=Path)
    over.add_argument("--runs", type=int, default=5)
    over.add_argument("--gen-tokens", type=int, default=64)
    kv = sub.add_parser("kv-reuse")
    kv.add_argument("model", type=Path)
    kv.add_argument("--turns", type=int, default=4)
    kv.add_argument("--turn-tokens", type=int, default=400)
    kv.add_argument("--final-tokens", type=int, default=200)
    kv.add_argument("--answer-tokens", type=int, default=16)
    args = parser.parse_args()
    started = time.perf_counter()
    if args.what == "overhead":
        result = overhead(args.model, args.runs, args.gen_tokens)
    else:
        result = kv_reuse(args.model, args.turns, args.turn_tokens, args.final_tokens, args.answer_tokens)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
