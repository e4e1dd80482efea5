"""Peak memory of `glm4-edge convert` on a GLM-4-9B- or GLM-4V-9B-shaped bf16 checkpoint (random weights).

    python benchmarks/convert_memory.py --layers 4            # 3.9 GB checkpoint
    python benchmarks/convert_memory.py --layers 40           # the full 18.8 GB GLM-4-9B shape
    python benchmarks/convert_memory.py --vision --layers 40  # the full ~28 GB GLM-4V-9B shape
    python benchmarks/convert_memory.py --vision --layers 40 --sparse-language  # the same in ~9 GB of disk
    python benchmarks/convert_memory.py --vision --layers 2 --vision-layers 2 --vocab 16384   # a smoke run

Builds the checkpoint once under benchmarks/out/, then converts it in a child process and reads its
peak resident memory (VmHWM: ru_maxrss would carry the parent's peak across exec), its sampled peak
of anonymous memory and wall time. Text models run the real CLI. GLM-4V runs `convert()` (what the
CLI calls) with its progress lines on stdout, so the anonymous peak is also given per stage: the
vision stage's peak against the language stages' shows whether the two parts were resident together.
A vision tower smaller than glm-4v-9b's is traced in float16 all the same (as the full-size one is),
so that a smoke run takes the full-size path. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"
SAMPLE_S = 0.05
VISION_STAGE = "converting the vision encoder"  # convert's progress line (vision_export.finish_vision)
STAGE_PREFIX = "stage: "  # the child's progress lines, apart from what NNCF prints


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


def build_vision(layers: int, vision_layers: int, vocab: int, sparse_language: bool = False) -> Path:
    """A GLM-4V-9B-shaped bf16 checkpoint (`layers` language and `vision_layers` vision blocks), built once;
    `sparse_language`: language matrices zero, as holes in sparse files (see the builder)."""
    from glm4_edge.convert.vision_synthetic import (
        GLM4V_9B_LANGUAGE,
        GLM4V_9B_VISION,
        build_sharded_vision_checkpoint,
    )

    sparse = "-sparse-language" if sparse_language else ""
    folder = OUT / f"glm4v-9b-shaped-L{layers}-V{vision_layers}-vocab{vocab}-bf16{sparse}"
    if not (folder / "config.json").is_file():
        build_sharded_vision_checkpoint(
            folder, dataclasses.replace(GLM4V_9B_LANGUAGE, num_hidden_layers=layers, vocab_size=vocab),
            dataclasses.replace(GLM4V_9B_VISION, num_hidden_layers=vision_layers), sparse_language=sparse_language)
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


def measure(source: Path, weight_format: str, vision: bool = False, keep: bool = False) -> dict:
    """Peak RSS, and apart from it the peak of anonymous memory: file-backed pages (the memory-mapped
    checkpoint and IR) count in RSS but are page cache the kernel drops under pressure, so the anonymous
    peak is what a machine must really have free."""
    output = OUT / f"{source.name}-{weight_format}-ov"
    shutil.rmtree(output, ignore_errors=True)
    started = time.perf_counter()
    if vision:
        command = [sys.executable, __file__, "--child", str(source), str(output), weight_format]
    else:
        # --no-resource-check: this measures what converting takes, the estimate must not stand in the way.
        command = [sys.executable, "-m", "glm4_edge.cli.main", "convert", str(source), "-o", str(output),
                   "--weight-format", weight_format, "--quiet", "--no-resource-check"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE if vision else None, text=True)
    stage = ["start"]
    stage_peaks: dict[str, int] = {}
    stage_started: dict[str, float] = {}
    if vision:
        def follow() -> None:
            for line in child.stdout:
                if line.startswith(STAGE_PREFIX):
                    stage[0] = line[len(STAGE_PREFIX):].strip()
                    stage_started.setdefault(stage[0], time.perf_counter() - started)

        threading.Thread(target=follow, daemon=True).start()
    peak_anon = peak_total = peak = 0
    free_at_start = lowest_free = shutil.disk_usage(OUT).free  # the disk the conversion writes at its peak
    while child.poll() is None:
        lowest_free = min(lowest_free, shutil.disk_usage(OUT).free)
        try:
            anon, mapped, high_water = _resident(child.pid)
        except (OSError, ValueError):
            break
        peak_anon, peak_total, peak = max(peak_anon, anon), max(peak_total, anon + mapped), max(peak, high_water)
        stage_peaks[stage[0]] = max(stage_peaks.get(stage[0], 0), anon)
        time.sleep(SAMPLE_S)
    if child.wait() != 0:
        raise SystemExit(f"convert failed with exit code {child.returncode}")
    seconds = time.perf_counter() - started
    checkpoint = sum(p.stat().st_size for p in source.glob("*.safetensors"))
    config = json.loads((source / "config.json").read_text())
    result = {"layers": config["num_hidden_layers"],
              "weight_format": weight_format, "checkpoint_gb": round(checkpoint / 1e9, 2),
              "peak_rss_gb": round(peak / 1e9, 2), "ratio": round(peak / checkpoint, 2),
              "peak_anonymous_gb": round(peak_anon / 1e9, 2), "anonymous_ratio": round(peak_anon / checkpoint, 2),
              "sampled_peak_rss_gb": round(peak_total / 1e9, 2),
              "seconds": round(seconds, 1),
              "peak_disk_written_gb": round((free_at_start - lowest_free) / 1e9, 2),
              "estimated_disk_gb": round(_disk_estimate(source, weight_format) / 1e9, 2),
              "output_gb": round(sum(p.stat().st_size for p in output.rglob("*") if p.is_file()) / 1e9, 2)}
    if vision:
        result.update(vision_layers=config["vision_config"]["num_hidden_layers"], **_vision_figures(
            source, weight_format, stage_peaks, stage_started, seconds))
    if keep:
        result["output"] = str(output)
    else:
        shutil.rmtree(output, ignore_errors=True)
    return result


def _disk_estimate(source: Path, weight_format: str) -> int:
    """What `convert`'s resource check asks to have free for this checkpoint."""
    from glm4_edge.convert import families
    from glm4_edge.convert.source import resource_needs

    info = families.detect_family(source)
    need_disk, _ = resource_needs(info, families.checkpoint_bytes(source), weight_format,
                                  staged_copy=info.family == "chatglm")
    return need_disk


def _vision_figures(source: Path, weight_format: str, stage_peaks: dict[str, int], stage_started: dict[str, float],
                    seconds: float) -> dict:
    """Per-stage anonymous peaks, the vision stage against the rest, and convert's own RAM estimate."""
    from glm4_edge.convert import families
    from glm4_edge.convert.export import resource_needs

    stages = list(stage_peaks)
    at = stages.index(VISION_STAGE) if VISION_STAGE in stages else len(stages)
    before, after = stages[:at], stages[at:]
    info = families.detect_family(source)
    _, need_ram = resource_needs(info, families.checkpoint_bytes(source), weight_format, staged_copy=True)
    return {"peak_anonymous_before_vision_gb": round(max((stage_peaks[s] for s in before), default=0) / 1e9, 2),
            "peak_anonymous_vision_gb": round(max((stage_peaks[s] for s in after), default=0) / 1e9, 2),
            "vision_seconds": round(seconds - stage_started.get(VISION_STAGE, seconds), 1),
            "estimated_ram_gb": round(need_ram / 1e9, 2),
            "stage_peak_anonymous_gb": {s: round(stage_peaks[s] / 1e9, 2) for s in stages}}


def child(source: str, output: str, weight_format: str) -> None:
    """Convert with progress lines on stdout; the vision tower traced in float16 whatever its size."""
    from glm4_edge.convert import vision_export
    from glm4_edge.convert.export import ConvertOptions, convert

    vision_export.FLOAT32_TRACE_LIMIT_BYTES = 0
    convert(ConvertOptions(source=source, output=Path(output), weight_format=weight_format, check_resources=False),
            progress=lambda message: print(STAGE_PREFIX + message, flush=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4, help="language layers (GLM-4-9B and GLM-4V-9B: 40)")
    parser.add_argument("--weight-format", default="int4", choices=("int4", "int8", "fp16"))
    parser.add_argument("--vision", action="store_true", help="a GLM-4V-9B-shaped checkpoint (vision tower too)")
    parser.add_argument("--vision-layers", type=int, default=63, help="vision blocks with --vision (glm-4v-9b: 63)")
    parser.add_argument("--vocab", type=int, default=151552, help="vocabulary with --vision (smaller: smoke runs)")
    parser.add_argument("--sparse-language", action="store_true",
                        help="with --vision: language matrices zero, as holes in sparse files (~9 GB of disk "
                             "instead of ~28 GB at full size); memory, disk and time do not depend on the values")
    parser.add_argument("--keep", action="store_true", help="keep the converted model (its path is in the result)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    OUT.mkdir(parents=True, exist_ok=True)
    if args.vision:
        source = build_vision(args.layers, args.vision_layers, args.vocab, args.sparse_language)
    else:
        source = build(args.layers)
    print(json.dumps(measure(source, args.weight_format, vision=args.vision, keep=args.keep)))


if __name__ == "__main__":
    main()
