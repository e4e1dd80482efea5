"""Build and cache the models `compare_engines.py` measures: one GLM-4-9B-shaped checkpoint, many formats.

Everything lands under benchmarks/out/L{layers}/ and is reused by later runs; a folder is only
published (renamed into place) once complete, so an interrupted build is redone, not trusted.

    checkpoint   hf-bf16/           random bf16 weights, real GLM-4-9B layer shapes and vocabulary
    glm4-edge    edge-fp16/         `glm4-edge convert --weight-format fp16`
                 edge-int4-cpu/     `glm4-edge convert` (the cpu preset), the full convert path
                 edge-<variant>/    NNCF on a copy of edge-fp16's IR with other settings (same code
                                    as convert's compression stage, without re-exporting each time)
    optimum      optimum-int4/      `optimum-cli export openvino --weight-format int4` (its defaults)
    llama.cpp    gguf/*.gguf        convert_hf_to_gguf.py (from llama-cpp-python's sdist) + quantize
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
PYTHON = sys.executable
SDIST_GLOB = "llama_cpp_python-*.tar.gz"
GGUF_ENGINE_FTYPES = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
                      "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}
Log = Callable[[str], None]


@dataclass(frozen=True)
class Variant:
    """An OpenVINO IR compressed by glm4-edge's compression stage with these settings."""

    name: str
    weight_format: str = "int4"
    preset: str = "cpu"  # the preset the overrides start from
    overrides: tuple[tuple[str, Any], ...] = ()
    label: str = ""

    def settings(self):
        from glm4_edge.convert import presets

        return presets.resolve(self.preset, self.weight_format, **dict(self.overrides))


# Every variant spells out symmetry, backup precision, INT4 share (ratio 1.0 unless a later override says
# otherwise) and group size, so a folder built once stays what its name says when the presets change
# (the cpu preset itself is edge-int4-cpu, see edge_convert).
ASYM = (("sym", False), ("backup_precision", "int8_asym"), ("ratio", 1.0))
SYM = (("sym", True), ("backup_precision", "int8_sym"), ("ratio", 1.0))
VARIANTS = {
    "edge-int4-gpu": Variant("edge-int4-gpu", preset="gpu",
                             label="glm4-edge INT4 gpu preset (as convert --device gpu writes it)"),
    "edge-int4-asym-g128": Variant("edge-int4-asym-g128", overrides=(*ASYM, ("group_size", 128)),
                                   label="glm4-edge INT4 asym g128 (the first cpu preset)"),
    "edge-int4-asym-g64": Variant("edge-int4-asym-g64", overrides=(*ASYM, ("group_size", 64)),
                                  label="glm4-edge INT4 asym g64"),
    "edge-int4-asym-g32": Variant("edge-int4-asym-g32", overrides=(*ASYM, ("group_size", 32)),
                                  label="glm4-edge INT4 asym g32"),
    "edge-int4-asym-cw": Variant("edge-int4-asym-cw", overrides=(*ASYM, ("group_size", -1)),
                                 label="glm4-edge INT4 asym channel-wise"),
    "edge-int4-sym-cw": Variant("edge-int4-sym-cw", overrides=(*SYM, ("group_size", -1)),
                                label="glm4-edge INT4 sym channel-wise"),
    "edge-int4-sym-g64": Variant("edge-int4-sym-g64", overrides=(*SYM, ("group_size", 64)),
                                 label="glm4-edge INT4 sym g64"),
    "edge-int4-int8emb": Variant("edge-int4-int8emb",
                                 overrides=(*ASYM, ("group_size", 128), ("all_layers", False)),
                                 label="glm4-edge INT4 asym g128, INT8 embeddings/lm_head"),
    "edge-int8": Variant("edge-int8", weight_format="int8", label="glm4-edge INT8 (asym channel-wise)"),
    "edge-int4-sym-g128": Variant("edge-int4-sym-g128", overrides=(*SYM, ("group_size", 128)),
                                  label="glm4-edge INT4 sym g128"),
    "edge-int4-sym-g32": Variant("edge-int4-sym-g32", overrides=(*SYM, ("group_size", 32)),
                                 label="glm4-edge INT4 sym g32"),
    "edge-int4-asym-g32-r80": Variant("edge-int4-asym-g32-r80", overrides=(*ASYM, ("group_size", 32), ("ratio", 0.8)),
                                      label="glm4-edge INT4 asym g32, 20% INT8"),
    "edge-int4-asym-g32-r90": Variant("edge-int4-asym-g32-r90", overrides=(*ASYM, ("group_size", 32), ("ratio", 0.9)),
                                      label="glm4-edge INT4 asym g32, 10% INT8"),
    "edge-nf4-g32": Variant("edge-nf4-g32", overrides=(*ASYM, ("int4_mode", "nf4"), ("group_size", 32)),
                            label="glm4-edge NF4 g32"),
    "edge-nf4-g64": Variant("edge-nf4-g64", overrides=(*ASYM, ("int4_mode", "nf4"), ("group_size", 64)),
                            label="glm4-edge NF4 g64"),
    "edge-int4-asym-g64-r80": Variant("edge-int4-asym-g64-r80", overrides=(*ASYM, ("group_size", 64), ("ratio", 0.8)),
                                      label="glm4-edge INT4 asym g64, 20% INT8"),
}


# "glm4-9b": GLM-4-9B's real layer shapes and vocabulary (what the numbers are about); "tiny": the
# test suite's small shape, so that a smoke run of the whole comparison takes a minute;
# "glm4-9b-small-vocab": GLM-4-9B's layers with the synthetic tokenizer's ~1K vocabulary, for error
# sweeps (every format quantizes rows independently, so the 151552-row tables add time, not information).
SHAPES = ("glm4-9b", "tiny", "glm4-9b-small-vocab")
shape_name = SHAPES[0]
# The weight statistics of the random checkpoint (glm4_edge.convert.synthetic.WEIGHT_STATISTICS):
# "gaussian", or "realistic" (Student's t tails and outlier input channels, as measured in real LLMs).
WEIGHTS = ("gaussian", "realistic")
weights_name = WEIGHTS[0]


def configure(shape: str = SHAPES[0], work: Path | None = None, weights: str = WEIGHTS[0]) -> None:
    """Which shape and weight statistics to build, and where (default benchmarks/out/)."""
    global OUT, shape_name, weights_name
    if shape not in SHAPES:
        raise ValueError(f"shape {shape!r} is not one of {', '.join(SHAPES)}")
    if weights not in WEIGHTS:
        raise ValueError(f"weights {weights!r} is not one of {', '.join(WEIGHTS)}")
    shape_name, weights_name = shape, weights
    if work is not None:
        OUT = Path(work).resolve()


def layer_folder(layers: int) -> Path:
    folder = f"L{layers}" if shape_name == "glm4-9b" else f"{shape_name}-L{layers}"
    return OUT / (folder if weights_name == "gaussian" else f"{folder}-{weights_name}")


def _timed(log: Log, what: str, action: Callable[[], Any]) -> Any:
    log(f"building {what} ...")
    started = time.perf_counter()
    result = action()
    log(f"built {what} in {time.perf_counter() - started:.0f} s")
    return result


def _publish(temp: Path, final: Path) -> Path:
    if final.exists():
        shutil.rmtree(final)
    os.replace(temp, final)
    return final


def _fresh_temp(final: Path) -> Path:
    temp = final.parent / f".{final.name}.tmp"
    if temp.is_dir():
        shutil.rmtree(temp)
    elif temp.exists():
        temp.unlink()
    return temp


def checkpoint(layers: int, log: Log) -> Path:
    final = layer_folder(layers) / "hf-bf16"
    if (final / "config.json").is_file():
        return final

    def build() -> Path:
        from glm4_edge.convert.synthetic import GLM4_9B, TINY, build_checkpoint

        temp = _fresh_temp(final)
        base = {"glm4-9b": GLM4_9B, "tiny": TINY,
                "glm4-9b-small-vocab": dataclasses.replace(GLM4_9B, vocab_size=None)}[shape_name]
        shape = dataclasses.replace(base, num_hidden_layers=layers)
        build_checkpoint(temp, "glm4", shape=shape, dtype="bfloat16", weights=weights_name)
        return _publish(temp, final)

    final.parent.mkdir(parents=True, exist_ok=True)
    return _timed(log, f"the {layers}-layer {shape_name}-shaped bf16 checkpoint ({weights_name} weights)", build)


def edge_convert(layers: int, name: str, weight_format: str, log: Log) -> Path:
    """A model made by glm4-edge's own `convert` (export + compression + tokenizers + manifest)."""
    final = layer_folder(layers) / name
    if (final / "openvino_model.xml").is_file() and _made_by_todays_preset(final, weight_format):
        return final
    source = checkpoint(layers, log)

    def build() -> Path:
        from glm4_edge.convert.export import ConvertOptions, convert

        from glm4_edge.manifest import read_manifest

        temp = _fresh_temp(final)
        convert(ConvertOptions(source=str(source), output=temp, weight_format=weight_format, device="cpu",
                               check_resources=False))
        manifest = read_manifest(temp)
        manifest.name = name  # convert names the model after the folder it wrote, our temporary one
        manifest.write(temp)
        return _publish(temp, final)

    return _timed(log, name, build)


def _made_by_todays_preset(folder: Path, weight_format: str) -> bool:
    """Whether a cached `convert` output still matches the cpu preset (presets change as tuning goes on)."""
    from glm4_edge.convert import presets

    from glm4_edge.manifest import read_manifest

    if weight_format == "fp16":
        return True
    settings = presets.resolve("cpu", weight_format)
    done = read_manifest(folder).compression
    return done is not None and (done.sym, done.group_size, done.ratio, done.all_layers, done.backup_precision) == (
        settings.sym, settings.group_size, settings.ratio, settings.all_layers, settings.backup_precision)


def edge_variant(layers: int, variant: Variant, log: Log) -> Path:
    """Compress a copy of the fp16 IR with `variant`'s settings, exactly as convert's last stage does."""
    final = layer_folder(layers) / variant.name
    if (final / "openvino_model.xml").is_file():
        return final
    fp16 = edge_convert(layers, "edge-fp16", "fp16", log)
    source = checkpoint(layers, log)

    def build() -> Path:
        from glm4_edge.convert import export

        from glm4_edge.integrity import file_table
        from glm4_edge.manifest import Compression, read_manifest

        temp = _fresh_temp(final)
        temp.mkdir()
        for item in fp16.iterdir():
            # Hard links cost no disk; compress_ir replaces the IR files rather than writing into them.
            if item.suffix == ".bin":
                os.link(item, temp / item.name)
            else:
                shutil.copy2(item, temp / item.name)
        settings = variant.settings()
        export.compress_ir(temp, source, settings)
        manifest = read_manifest(temp)
        manifest.name = variant.name
        manifest.compression = Compression(
            weight_format=settings.weight_format, group_size=settings.group_size, ratio=settings.ratio,
            sym=settings.sym, all_layers=settings.all_layers, backup_precision=settings.backup_precision,
            bits_table=export.bits_table(temp / "openvino_model.xml"))
        manifest.files = file_table(temp)  # the fp16 model's hashes no longer describe the new IR
        manifest.write(temp)
        return _publish(temp, final)

    return _timed(log, variant.name, build)


def optimum_default(layers: int, log: Log) -> Path:
    """What `optimum-cli export openvino --weight-format int4` makes: INT8 embeddings and lm_head."""
    final = layer_folder(layers) / "optimum-int4"
    if (final / "openvino_model.xml").is_file():
        return final
    source = checkpoint(layers, log)

    def build() -> Path:
        temp = _fresh_temp(final)
        cli = Path(PYTHON).parent / "optimum-cli"
        subprocess.run([str(cli), "export", "openvino", "--model", str(source), "--task",
                        "text-generation-with-past", "--weight-format", "int4", str(temp)], check=True,
                       stdout=subprocess.DEVNULL)
        return _publish(temp, final)

    return _timed(log, "optimum-int4 (optimum-cli defaults)", build)


def llama_sources() -> Path:
    """llama.cpp's converter as shipped in llama-cpp-python's sdist (the same llama.cpp as the wheel)."""
    root = OUT / "sdist"
    found = sorted(root.glob("llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    if found:
        return found[-1].parent
    archives = sorted(root.glob(SDIST_GLOB))
    if not archives:
        root.mkdir(parents=True, exist_ok=True)
        from importlib import metadata

        version = metadata.version("llama-cpp-python")
        subprocess.run([PYTHON, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", str(root)], check=True,
                       stdout=subprocess.DEVNULL)
        archives = sorted(root.glob(SDIST_GLOB))
    with tarfile.open(archives[-1]) as archive:
        wanted = [m for m in archive.getmembers()
                  if "/vendor/llama.cpp/" in m.name and any(part in m.name for part in (
                      "convert_hf_to_gguf.py", "/conversion/", "/gguf-py/"))]
        archive.extractall(root, members=wanted, filter="data")
    return sorted(root.glob("llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py"))[-1].parent


def gguf(layers: int, quant: str, log: Log) -> Path:
    final = layer_folder(layers) / "gguf" / f"model-{quant}.gguf"
    if final.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    f16 = final.parent / "model-f16.gguf"
    if not f16.is_file():
        source = checkpoint(layers, log)
        temp = final.parent / ".model-f16.gguf.tmp"
        _timed(log, "the f16 GGUF", lambda: subprocess.run(
            [PYTHON, str(HERE / "gguf_convert.py"), str(llama_sources()), str(source), str(temp)],
            check=True))
        os.replace(temp, f16)

    def build() -> Path:
        import llama_cpp

        temp = final.parent / f".{final.name}.tmp"
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, GGUF_ENGINE_FTYPES[quant])
        params.nthread = os.cpu_count() or 1
        status = llama_cpp.llama_model_quantize(str(f16).encode(), str(temp).encode(), params)
        if status != 0:
            raise RuntimeError(f"llama_model_quantize failed ({status}) for {quant}")
        os.replace(temp, final)
        return final

    return _timed(log, f"GGUF {quant}", build)


def drop_f16_gguf(layers: int, quants: tuple[str, ...] = ("q4_0", "q4_k_m")) -> None:
    """The f16 GGUF is only an intermediate: 2 bytes per weight of disk for nothing once quantized."""
    f16 = layer_folder(layers) / "gguf" / "model-f16.gguf"
    if f16.is_file() and all((f16.parent / f"model-{q}.gguf").is_file() for q in quants):
        f16.unlink()
