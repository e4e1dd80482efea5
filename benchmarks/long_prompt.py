"""Long prompts on edge hardware: prefill tokens/s, peak memory, chunked-prefill cost and the follow-up TTFT.

    python benchmarks/long_prompt.py MODEL --tokens 8192 32768 65536 [--kv u8 u4] [--json out.jsonl]

Each (length, KV precision) runs in a fresh process so its peak RSS (VmHWM) is its own; the peak is
reset between the phases, so the one-shot and chunked peaks are each their own (the follow-up's
includes the chunked prefill's KV cache). In that
process: a one-shot prefill of a document of N tokens (`--no-one-shot` skips it), a chunked prefill
(glm4-edge's progress/cancel path) of a different document of the same length, then a follow-up
question about that second document, whose TTFT shows what the prefix cache saves. Documents are
random words, so no two measurements share a prefix. MODEL is e.g. the 8-layer GLM-4-9B-shaped INT4
model `benchmarks/bench_models.py` builds; its manifest's context is overridden to fit N.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_runner import emit  # noqa: E402

WORDS = ("alpha beta gamma delta model token cache stream answer history system user reply quick brown fox "
         "jumps over lazy dog river mountain city light sound water stone green blue report revenue").split()


def document(model, tokens: int, seed: int) -> str:
    """Random words cut to exactly `tokens` tokens of this model's vocabulary."""
    import random

    rng = random.Random(seed)
    text = " ".join(rng.choice(WORDS) for _ in range(tokens))
    ids = model.tokenizer.encode(text, add_special_tokens=False).input_ids.data[0][:tokens]
    return model.tokenizer.decode([int(i) for i in ids])


def _rss_gib(field: str = "VmRSS") -> float:
    """A /proc/self/status memory field in GiB: VmRSS, or RssAnon (without the mapped IR's pages)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 2**20, 2)
    return 0.0


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0, `clear_refs` value 5), so that the next phase's
    peak is its own and not the one-shot prefill's."""
    Path("/proc/self/clear_refs").write_text("5")


def measure(model_dir: str, tokens: int, kv: str, one_shot: bool) -> dict:
    import openvino_genai

    import glm4_edge
    from glm4_edge.documents import Document, document_prompt
    from glm4_edge.loading import presize_kv_cache
    from glm4_edge.model import peak_rss_bytes
    from glm4_edge.prefill import UNSAFE_KV_PRECISIONS

    properties: dict = {"KV_CACHE_PRECISION": kv}
    if kv in UNSAFE_KV_PRECISIONS:  # its cache is sized at load: for this prompt, not the manifest's context
        scheduler = openvino_genai.SchedulerConfig()
        scheduler.enable_prefix_caching = True
        presize_kv_cache(scheduler, tokens + 4096)
        properties["scheduler_config"] = scheduler
    model = glm4_edge.load(model_dir, properties=properties)
    model.context_length = tokens + 4096
    model.warm_up()
    loaded_rss = _rss_gib()
    # The machine's 1-minute load average: on a shared 2-core machine the rates mean little without it.
    result: dict = {"prompt_tokens": tokens, "kv_cache_precision": kv, "load_avg_start": os.getloadavg()[0],
                    "loaded_rss_gib": loaded_rss, "loaded_anon_gib": _rss_gib("RssAnon")}

    def ask(text: str, question: str, chunked: bool) -> tuple[float, int, int]:
        model.prefill_threshold = 4096 if chunked else 0
        prompt = document_prompt([Document("report.txt", text, "text")], question)
        chunks = list(model.stream(prompt, max_new_tokens=1, temperature=0.0, ignore_eos=True))
        updates = sum(c.progress is not None for c in chunks)
        return chunks[-1].stats.ttft_s, chunks[-1].stats.prompt_tokens, updates

    if one_shot:
        ttft, count, _ = ask(document(model, tokens, 1), "Summarize the report.", chunked=False)
        result.update(one_shot_ttft_s=round(ttft, 2), one_shot_tokens_per_s=round(count / ttft, 1),
                      one_shot_peak_rss_gib=round(peak_rss_bytes() / 2**30, 2))
        _reset_peak()
        print(json.dumps(result), file=sys.stderr, flush=True)  # partial results survive a timeout
    text = document(model, tokens, 2)
    started = time.perf_counter()
    ttft, count, updates = ask(text, "Summarize the report.", chunked=True)
    result.update(chunked_ttft_s=round(ttft, 2), chunked_tokens_per_s=round(count / ttft, 1),
                  chunked_wall_s=round(time.perf_counter() - started, 2), progress_updates=updates,
                  chunked_peak_rss_gib=round(peak_rss_bytes() / 2**30, 2), load_avg_end=os.getloadavg()[0])
    print(json.dumps(result), file=sys.stderr, flush=True)
    follow, _, _ = ask(text, "Which city does the report name first?", chunked=True)
    result.update(follow_up_ttft_s=round(follow, 3), follow_up_peak_rss_gib=round(peak_rss_bytes() / 2**30, 2))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--tokens", type=int, nargs="+", default=[8192, 32768, 65536])
    parser.add_argument("--kv", nargs="+", default=["u8"], help="KV_CACHE_PRECISION values")
    parser.add_argument("--no-one-shot", type=int, nargs="*", default=[],
                        help="lengths at which to skip the one-shot prefill (to save time)")
    parser.add_argument("--json", type=Path, help="append results as JSON lines")
    parser.add_argument("--one", nargs=3, metavar=("TOKENS", "KV", "ONE_SHOT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.model, int(args.one[0]), args.one[1], args.one[2] == "1")))
        return 0
    for tokens in args.tokens:
        for kv in args.kv:
            one_shot = "0" if tokens in args.no_one_shot else "1"
            done = subprocess.run([sys.executable, __file__, args.model, "--one", str(tokens), kv, one_shot],
                                  stdout=subprocess.PIPE, text=True)
            line = done.stdout.strip().splitlines()[-1] if done.returncode == 0 else json.dumps(
                {"prompt_tokens": tokens, "kv_cache_precision": kv, "error": f"exit {done.returncode}"})
            emit(line, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
