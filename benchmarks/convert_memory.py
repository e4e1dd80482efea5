"""Peak memory of `glm4-edge convert` on a GLM-4-9B-shaped bf16 checkpoint (random weights).

    python benchmarks/convert_memory.py --layers 4            # 3.9 GB checkpoint
    python benchmarks/convert_memory.py --layers 40           # the full 18.8 GB GLM-4-9B shape

Builds the checkpoint once under benchmarks/out/, then runs the real CLI in a child process and reads
its peak resident memory (VmHWM: ru_maxrss would carry the
parent's peak across exec), its sampled peak of anonymous memory and wall time. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
SAMPLE_S = 0.05


def build(layers: int) -> Path:
    folder = OUT / f"glm4-9b-shaped-L{layers}-bf16"
    if (folder / "config.json").is_file():
        return folder
    import torch
    from glm4_edge.convert.synthetic import GLM4_9B, build_tokenizer
    from transformers import AutoModelForCausalLM, Glm4Config

    shape = dataclasses.replace(GLM4_9B, num_hidden_layers=layers)
    tokenizer = build_tokenizer()
    config = Glm4Config(vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
                        intermediate_size=shape.intermediate_size, num_hidden_layers=layers,
                        num_attention_heads=shape.num_attention_heads,
                        num_key_value_heads=shape.num_key_value_heads, head_dim=shape.head_dim,
                        max_position_embeddings=32768, dtype="bfloat16")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():  # random weights, a layer at a time
            parameter.normal_(0.0, 0.02, generator=generator) if parameter.dim() > 1 else parameter.fill_(1.0)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, max_shard_size="2GB")
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def _resident(pid: int) -> tuple[int, int, int]:
    """(anonymous, file-backed, peak) resident bytes of a process, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("RssAnon", "RssFile", "RssShmem", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return (fields.get("RssAnon", 0), fields.get("RssFile", 0) + fields.get("RssShmem", 0),
            fields.get("VmHWM", 0))


def measure(source: Path, weight_format: str) -> dict:
    """Peak RSS, and apart from it the peak of anonymous memory: file-backed pages (the memory-mapped
    checkpoint and IR) count in RSS but are page cache the kernel drops under pressure, so the anonymous
    peak is what a machine must really have free."""
    output = OUT / f"{source.name}-{weight_format}-ov"
    shutil.rmtree(output, ignore_errors=True)
    started = time.perf_counter()
    # --no-resource-check: this measures what converting takes, the estimate must not stand in the way.
    child = subprocess.Popen([sys.executable, "-m", "glm4_edge.cli.main", "convert", str(source), "-o",
                              str(output), "--weight-format", weight_format, "--quiet", "--no-resource-check"])
    peak_anon = peak_total = peak = 0
    while child.poll() is None:
        try:
            anon, mapped, high_water = _resident(child.pid)
        except (OSError, ValueError):
            break
        peak_anon, peak_total, peak = max(peak_anon, anon), max(peak_total, anon + mapped), max(peak, high_water)
        time.sleep(SAMPLE_S)
    if child.wait() != 0:
        raise SystemExit(f"convert failed with exit code {child.returncode}")
    seconds = time.perf_counter() - started
    checkpoint = sum(p.stat().st_size for p in source.glob("*.safetensors"))
    result = {"layers": json.loads((source / "config.json").read_text())["num_hidden_layers"],
              "weight_format": weight_format, "checkpoint_gb": round(checkpoint / 1e9, 2),
              "peak_rss_gb": round(peak / 1e9, 2), "ratio": round(peak / checkpoint, 2),
              "peak_anonymous_gb": round(peak_anon / 1e9, 2), "anonymous_ratio": round(peak_anon / checkpoint, 2),
              "sampled_peak_rss_gb": round(peak_total / 1e9, 2),
              "seconds": round(seconds, 1),
              "output_gb": round(sum(p.stat().st_size for p in output.rglob("*") if p.is_file()) / 1e9, 2)}
    shutil.rmtree(output, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--weight-format", default="int4", choices=("int4", "int8", "fp16"))
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    source = build(args.layers)
    print(json.dumps(measure(source, args.weight_format)))


if __name__ == "__main__":
    main()
