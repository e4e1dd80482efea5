"""Where a long prompt's memory goes: peak RSS of one prefill against prompt length and scheduler step size.

    python benchmarks/prefill_memory.py --layers 1 --tokens 4096 8192 16384 32768 --step 256 1024

Each (length, step) runs in a fresh process: load the GLM-4-9B-shaped INT4 model (the cpu preset,
`bench_models`, small vocabulary so the embedding does not dominate), warm up, read VmRSS, prefill a
prompt of random words of that many tokens in one generate call (max_new_tokens 1) with the
continuous-batching scheduler's `max_num_batched_tokens` set to the step, read VmHWM. The KV cache is
computed from the shape and subtracted, so what remains is the activation and scratch memory that
grows with the prompt (docs/documents.md, "KV cache memory"). Time under load says nothing; memory does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def one(folder: str, tokens: int, step: int, kv: str) -> dict:
    import random

    import openvino_genai

    import glm4_edge
    from glm4_edge.loading import presize_kv_cache
    from glm4_edge.prefill import UNSAFE_KV_PRECISIONS

    scheduler = openvino_genai.SchedulerConfig()
    scheduler.enable_prefix_caching = True
    scheduler.max_num_batched_tokens = step
    if kv in UNSAFE_KV_PRECISIONS:  # sized at load: for this prompt, not the manifest's context
        presize_kv_cache(scheduler, tokens + 1024)
    model = glm4_edge.load(folder, properties={"KV_CACHE_PRECISION": kv, "scheduler_config": scheduler})
    model.context_length = tokens + 1024
    model.prefill_threshold = 0  # one call: the scheduler's step is the only chunking
    model.warm_up()
    before = _status("VmRSS")
    rng = random.Random(tokens)
    words = "alpha beta gamma delta model token cache stream answer history report river city light".split()
    ids = model.tokenizer.encode(" ".join(rng.choice(words) for _ in range(tokens)),
                                 add_special_tokens=False).input_ids.data[0][:tokens]
    text = model.tokenizer.decode([int(i) for i in ids])
    started = time.perf_counter()
    chunks = list(model.stream(text, max_new_tokens=1, temperature=0.0, ignore_eos=True))
    seconds = time.perf_counter() - started
    config = json.loads((Path(folder) / "config.json").read_text())
    per_token = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * config.get(
        "head_dim", config["hidden_size"] // config["num_attention_heads"]) * (1 if kv == "u8" else 2)
    prompt = chunks[-1].stats.prompt_tokens
    return {"tokens": prompt, "step": step, "kv": kv, "rss_after_load_gib": round(before / 2**30, 3),
            "peak_rss_gib": round(_status("VmHWM") / 2**30, 3),
            "growth_gib": round((_status("VmHWM") - before) / 2**30, 3),
            "kv_cache_gib": round(prompt * per_token / 2**30, 3), "seconds": round(seconds, 1),
            "heads": config["num_attention_heads"], "layers": config["num_hidden_layers"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--step", type=int, nargs="+", default=[256])
    parser.add_argument("--kv", default="u8")
    parser.add_argument("--model", help="a converted model folder instead of the built one")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.model, int(args.one[0]), int(args.one[1]), args.one[2])), flush=True)
        return
    folder = args.model
    if not folder:
        import bench_models

        bench_models.configure("glm4-9b-small-vocab")
        folder = str(bench_models.edge_convert(args.layers, "edge-int4-cpu", "int4", print))
    for step in args.step:
        for tokens in args.tokens:
            out = subprocess.run([sys.executable, __file__, "--model", folder, "--one", str(tokens), str(step),
                                  args.kv], capture_output=True, text=True)
            print(out.stdout.strip() or out.stderr.strip()[-500:], flush=True)


if __name__ == "__main__":
    main()
