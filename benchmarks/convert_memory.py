"""Peak memory of `glm4-edge convert` on a GLM-4-9B-shaped bf16 checkpoint (random weights).

    python benchmarks/convert_memory.py --layers 4            # 3.9 GB checkpoint
    python benchmarks/convert_memory.py --layers 40           # the full 18.8 GB GLM-4-9B shape

Builds the checkpoint once under benchmarks/out/, then runs the real CLI in a child process and reads
its peak resident memory (ru_maxrss) and wall time. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


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


def measure(source: Path, weight_format: str) -> dict:
    output = OUT / f"{source.name}-{weight_format}-ov"
    shutil.rmtree(output, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "glm4_edge.cli.main", "convert", str(source), "-o", str(output),
                    "--weight-format", weight_format, "--quiet"], check=True)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    checkpoint = sum(p.stat().st_size for p in source.glob("*.safetensors"))
    result = {"layers": json.loads((source / "config.json").read_text())["num_hidden_layers"],
              "weight_format": weight_format, "checkpoint_gb": round(checkpoint / 1e9, 2),
              "peak_rss_gb": round(peak / 1e9, 2), "ratio": round(peak / checkpoint, 2),
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
