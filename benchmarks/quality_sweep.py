"""Quantization error of every format, OpenVINO and llama.cpp, on the GLM-4-9B-shaped benchmark model.

    python benchmarks/quality_sweep.py --weights realistic --layers 8 [--only a,b] [--drop]

For one weight statistic (bench_models.WEIGHTS) it builds the checkpoint, the OpenVINO variants and
the GGUF files (cached under benchmarks/out/), then measures for each:

* weight error: relative MSE of the dequantized weights against the checkpoint, per matrix, from the
  IR's compressed constants or through the gguf package (glm4_edge.weight_error), 256 evenly spaced
  rows per matrix;
* output error: logits on fixed random token ids against PyTorch running the bf16 checkpoint in fp32
  (KL, top-1 agreement, relative logit RMSE; glm4_edge.evaluate.output_error). OpenVINO runs the IR
  in f32 with glm4-edge's CPU activation quantization (DYNAMIC_QUANTIZATION_GROUP_SIZE 128), llama.cpp
  through llama-cpp-python's logits (f32 with its own 8-bit activation quantization): both engines'
  arithmetic as close to exact as they go, so the table ranks weight formats. One extra row,
  `edge-fp16-bf16`, is the fp16 IR at OpenVINO's default precision on a bf16-capable CPU: the error
  the runtime's bf16 arithmetic adds on its own.

Results go to benchmarks/out/quality-<weights>-L<layers>.json (read by bench_report.quality_table).
Deterministic: CPU load changes the time it takes, not the numbers.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_models  # noqa: E402
from bench_models import ASYM, SYM, Variant  # noqa: E402

from glm4_edge.devices import CPU_DYNAMIC_QUANTIZATION_GROUP  # noqa: E402
from glm4_edge.evaluate import output_error  # noqa: E402
from glm4_edge.weight_error import gguf_weight_error, ir_weight_error  # noqa: E402

SEQUENCES = 2
SEQUENCE_TOKENS = 128
SEED = 1234


def _v(name: str, label: str, *overrides, preset: str = "cpu", weight_format: str = "int4") -> Variant:
    return Variant(name, weight_format=weight_format, preset=preset, overrides=tuple(overrides), label=label)


# OpenVINO candidates: every one spells out its settings (folder names stay true when presets change).
CANDIDATES = {v.name: v for v in (  # in the order they are measured: the likely presets first
    _v("edge-int4-sym-cw", "sym channel-wise (the fast preset)", *SYM, ("group_size", -1)),
    _v("edge-int4-asym-g32", "asym g32", *ASYM, ("group_size", 32)),
    _v("edge-int4-asym-g32-r80", "asym g32, 20% INT8 (ratio 0.8)", *ASYM, ("group_size", 32), ("ratio", 0.8)),
    _v("edge-int4-sym-g128", "sym g128 (the former gpu/npu preset)", *SYM, ("group_size", 128)),
    _v("edge-int4-sym-g128-awq", "sym g128 + AWQ + scale estimation (the npu preset's candidate)", *SYM,
       ("group_size", 128), ("awq", True), ("scale_estimation", True), preset="npu"),
    _v("edge-int8", "INT8 asym channel-wise", weight_format="int8"),
    _v("edge-int4-asym-g128", "asym g128", *ASYM, ("group_size", 128)),
    _v("edge-int4-asym-g64", "asym g64", *ASYM, ("group_size", 64)),
    _v("edge-int4-sym-g32", "sym g32 (Q4_0's layout)", *SYM, ("group_size", 32)),
    _v("edge-int4-asym-g64-r80", "asym g64, 20% INT8 (ratio 0.8)", *ASYM, ("group_size", 64), ("ratio", 0.8)),
    _v("edge-int4-asym-g32-r60", "asym g32, 40% INT8 (ratio 0.6)", *ASYM, ("group_size", 32), ("ratio", 0.6)),
    _v("edge-int4-asym-g128-awq", "asym g128 + AWQ + scale estimation (builtin calibration)", *ASYM,
       ("group_size", 128), ("awq", True), ("scale_estimation", True)),
    # Other 4-bit number formats: NF4 (QLoRA's normal-float levels) and CB4 (16 fixed fp8 levels).
    _v("edge-nf4-g32", "NF4 g32", *ASYM, ("int4_mode", "nf4"), ("group_size", 32)),
    _v("edge-nf4-g64", "NF4 g64", *ASYM, ("int4_mode", "nf4"), ("group_size", 64)),
    _v("edge-cb4-g32", "CB4 (fp8 codebook) g32", *ASYM, ("int4_mode", "cb4"), ("group_size", 32)),
    _v("edge-nf4-g32-r80", "NF4 g32, 20% INT8 (ratio 0.8)", *ASYM, ("int4_mode", "nf4"), ("group_size", 32),
       ("ratio", 0.8)),
    _v("edge-nf4-g64-r80", "NF4 g64, 20% INT8 (ratio 0.8)", *ASYM, ("int4_mode", "nf4"), ("group_size", 64),
       ("ratio", 0.8)),
    _v("edge-cb4-g32-r80", "CB4 (fp8 codebook) g32, 20% INT8 (ratio 0.8)", *ASYM, ("int4_mode", "cb4"),
       ("group_size", 32), ("ratio", 0.8)),
    # GPTQ on the built-in calibration set (the data AWQ uses).
    _v("edge-int4-asym-g32-gptq", "asym g32 + GPTQ (builtin calibration)", *ASYM, ("group_size", 32),
       ("gptq", True)),
    _v("edge-int4-asym-g64-gptq", "asym g64 + GPTQ (builtin calibration)", *ASYM, ("group_size", 64),
       ("gptq", True)),
    # Fewer INT8 layers than the default (the prefill lever): ratio 0.9, INT8 layers picked data-free (the
    # control) or by activations on the built-in calibration set.
    _v("edge-int4-asym-g32-r90", "asym g32, 10% INT8 (ratio 0.9)", *ASYM, ("group_size", 32), ("ratio", 0.9)),
    _v("edge-int4-asym-g32-r95", "asym g32, 5% INT8 (ratio 0.95)", *ASYM, ("group_size", 32), ("ratio", 0.95)),
    _v("edge-int4-asym-g64-r90", "asym g64, 10% INT8 (ratio 0.9)", *ASYM, ("group_size", 64), ("ratio", 0.9)),
    _v("edge-int4-asym-g32-r90-hessian", "asym g32, 10% INT8 by Hessian (ratio 0.9, data-aware)", *ASYM,
       ("group_size", 32), ("ratio", 0.9), ("sensitivity_metric", "hessian_input_activation")),
    _v("edge-int4-asym-g32-r90-magnitude", "asym g32, 10% INT8 by activation magnitude (ratio 0.9)", *ASYM,
       ("group_size", 32), ("ratio", 0.9), ("sensitivity_metric", "mean_activation_magnitude")),
    _v("edge-int4-asym-g32-r80-hessian", "asym g32, 20% INT8 by Hessian (ratio 0.8, data-aware)", *ASYM,
       ("group_size", 32), ("ratio", 0.8), ("sensitivity_metric", "hessian_input_activation")),
    _v("edge-int4-asym-g64-r90-hessian", "asym g64, 10% INT8 by Hessian (ratio 0.9, data-aware)", *ASYM,
       ("group_size", 64), ("ratio", 0.9), ("sensitivity_metric", "hessian_input_activation")),
    _v("edge-int4-asym-g64-r80-hessian", "asym g64, 20% INT8 by Hessian (ratio 0.8, data-aware)", *ASYM,
       ("group_size", 64), ("ratio", 0.8), ("sensitivity_metric", "hessian_input_activation")),
)}
GGUF_QUANTS = ("q4_0", "q4_k_m", "q5_k_m", "q8_0")


def token_ids(vocab: int) -> list[list[int]]:
    rng = np.random.default_rng(SEED)
    return [rng.integers(0, vocab, SEQUENCE_TOKENS).tolist() for _ in range(SEQUENCES)]


def reference_logits(checkpoint: Path, ids: list[list[int]], cache: Path) -> list[np.ndarray]:
    """PyTorch fp32 logits of the bf16 checkpoint, cached as .npy next to the checkpoint."""
    paths = [cache.with_name(f"{cache.name}-{i}.npy") for i in range(len(ids))]
    if all(p.is_file() for p in paths):
        return [np.load(p) for p in paths]
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for path, sequence in zip(paths, ids, strict=True):
            logits = model(torch.tensor([sequence])).logits[0].float().numpy()
            np.save(path, logits)
            out.append(logits)
    del model
    gc.collect()
    return out


def openvino_logits(folder: Path, ids: list[list[int]], precision: str = "f32") -> list[np.ndarray]:
    import openvino as ov

    properties: dict[str, Any] = {"DYNAMIC_QUANTIZATION_GROUP_SIZE": CPU_DYNAMIC_QUANTIZATION_GROUP}
    if precision:
        properties["INFERENCE_PRECISION_HINT"] = precision
    compiled = ov.Core().compile_model(folder / "openvino_model.xml", "CPU", properties)
    names = {port.get_any_name() for port in compiled.inputs}
    request = compiled.create_infer_request()
    out = []
    for sequence in ids:
        inputs = {"input_ids": np.array([sequence], np.int64), "attention_mask": np.ones((1, len(sequence)), np.int64)}
        if "position_ids" in names:
            inputs["position_ids"] = np.arange(len(sequence), dtype=np.int64)[None]
        if "beam_idx" in names:
            inputs["beam_idx"] = np.zeros((1,), np.int32)
        request.reset_state()
        out.append(np.array(request.infer(inputs)["logits"][0], np.float32))
    del request, compiled
    gc.collect()
    return out


def llama_logits(path: Path, ids: list[list[int]]) -> list[np.ndarray]:
    from llama_cpp import Llama

    model = Llama(str(path), n_ctx=SEQUENCE_TOKENS * 2, n_batch=SEQUENCE_TOKENS, logits_all=True, n_threads=2,
                  verbose=False)
    out = []
    for sequence in ids:
        model.reset()
        model.eval(sequence)
        out.append(np.array(model.scores[:len(sequence)], np.float32))
    del model
    gc.collect()
    return out


def score(logits: list[np.ndarray], reference: list[np.ndarray]) -> dict[str, float]:
    parts = [output_error(got, want) for got, want in zip(logits, reference, strict=True)]
    powers = [float(np.square(want.astype(np.float64)).sum()) for want in reference]
    rmse = float(np.sqrt(sum(p * e.relative_logit_rmse ** 2 for p, e in zip(powers, parts, strict=True))
                         / sum(powers)))
    return {"kl": float(np.mean([e.mean_kl for e in parts])),
            "top1": float(np.mean([e.top1_agreement for e in parts])), "logit_rmse": rmse}


def precision_shares(weight) -> dict[str, float]:
    """Share of the measured matrices' parameters (embeddings and lm_head included) per stored precision,
    in percent: how many weights stayed in INT8 (u8/i8) against 4 bits (u4, i4, nf4, cb4, q4_K, ...)."""
    total = sum(m.parameters for m in weight.matrices) or 1
    shares: dict[str, float] = {}
    for matrix in weight.matrices:
        shares[matrix.precision] = shares.get(matrix.precision, 0.0) + 100.0 * matrix.parameters / total
    return {k: round(v, 2) for k, v in sorted(shares.items(), key=lambda item: -item[1])}


def folder_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.glob("openvino_model.*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", choices=bench_models.WEIGHTS, default="realistic")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--shape", choices=bench_models.SHAPES, default="glm4-9b")
    parser.add_argument("--only", help="comma-separated names (edge-... or gguf-q4_0 ...)")
    parser.add_argument("--drop", action="store_true", help="delete each model after measuring it (disk)")
    args = parser.parse_args(argv)
    bench_models.configure(args.shape, weights=args.weights)

    def log(message: str) -> None:
        print(time.strftime("%H:%M:%S"), message, flush=True)

    wanted = set(args.only.split(",")) if args.only else None  # measured in --only's order
    checkpoint = bench_models.checkpoint(args.layers, log)
    config = json.loads((checkpoint / "config.json").read_text())
    ids = token_ids(int(config["vocab_size"]))
    result_path = bench_models.OUT / f"quality-{args.weights}-{bench_models.layer_folder(args.layers).name}.json"
    results: dict[str, Any] = json.loads(result_path.read_text()) if result_path.is_file() else {}
    results.setdefault("meta", {}).update(weights=args.weights, layers=args.layers, shape=args.shape,
                                          sequences=SEQUENCES, tokens=SEQUENCE_TOKENS, seed=SEED)
    rows = results.setdefault("rows", {})
    reference = reference_logits(checkpoint, ids, bench_models.layer_folder(args.layers) / "reference-fp32")

    def record(name: str, label: str, engine: str, path: Path, weight, logits, seconds: float | None = None) -> None:
        row = {"label": label, "engine": engine, "bytes": folder_bytes(path),
               "weight": weight.summary() if weight else None, **score(logits, reference)}
        if weight:
            row["precisions"] = precision_shares(weight)
        if seconds is not None:
            row["compress_seconds"] = round(seconds)
        if result_path.is_file():  # another sweep process (e.g. --only gguf-...) may have added rows
            rows.update({k: v for k, v in json.loads(result_path.read_text())["rows"].items() if k != name})
        rows[name] = row
        result_path.write_text(json.dumps(results, indent=2))
        log(f"{name}: weight rel MSE {row['weight']['mean_relative_mse'] if row['weight'] else '-'} "
            f"KL {row['kl']:.4f} top-1 {row['top1']:.3f} logit RMSE {row['logit_rmse']:.3f}")

    fp16 = bench_models.edge_convert(args.layers, "edge-fp16", "fp16", log)
    if wanted is None or "edge-fp16" in wanted:
        record("edge-fp16", "OpenVINO FP16 (f32 arithmetic)", "openvino", fp16, None, openvino_logits(fp16, ids))
        record("edge-fp16-bf16", "OpenVINO FP16, default (bf16) arithmetic", "openvino", fp16, None,
               openvino_logits(fp16, ids, precision=""))
    everything = [*CANDIDATES, *(f"gguf-{q}" for q in GGUF_QUANTS)]
    for name in [n for n in args.only.split(",") if n in everything] if args.only else everything:
        if name.startswith("gguf-"):
            quant = name.removeprefix("gguf-")
            path = bench_models.gguf(args.layers, quant, log)
            record(name, f"llama.cpp {quant.upper()}", "llama.cpp", path, gguf_weight_error(path, checkpoint),
                   llama_logits(path, ids))
            if args.drop:
                path.unlink()
            continue
        variant = CANDIDATES[name]
        started = time.perf_counter()
        built = (bench_models.layer_folder(args.layers) / name / "openvino_model.xml").is_file()
        folder = bench_models.edge_variant(args.layers, variant, log)
        seconds = None if built else time.perf_counter() - started
        record(name, variant.label, "openvino", folder, ir_weight_error(folder, checkpoint),
               openvino_logits(folder, ids), seconds)
        if args.drop:
            shutil.rmtree(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
