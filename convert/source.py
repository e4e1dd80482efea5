"""Conversion's source side: finding the checkpoint (a folder or a hub id), its content hash, the default
output name, the disk and RAM a conversion needs, and the folder optimum exports from (remapped, merged
with an adapter, or with a longer context).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glm4_edge.errors import Glm4EdgeError, ModelFormatError
from glm4_edge.store import free_disk as free_disk_at

from . import families, lora

if TYPE_CHECKING:
    from .export import ConvertOptions

Progress = Callable[[str], None]
# RAM: the checkpoint and the IR are memory-mapped, so they only need page cache, which the kernel
# reclaims; what must be free is anonymous memory (measured, README "Measurements": 6.3 GB for the
# 18.8 GB GLM-4-9B shape, 0.34x). It is a base, plus the larger of NNCF's transient working copies of
# the biggest matrix (the 151552-row embedding: about 4.5x its fp16 size) and the compressed weights
# it holds before saving; with a margin.
RAM_BASE_BYTES = 1_000_000_000
RAM_LARGEST_MATRIX_COPIES = 4.5
RAM_MARGIN = 1.25
# Disk, as shares of the checkpoint's size, side by side at the peak: the fp16 IR, the compressed IR,
# and a rewritten copy of the checkpoint when one is staged (legacy remap, adapter merge); plus margin.
DISK_FP16_IR = 1.0
DISK_COMPRESSED = {"int4": 0.3, "int8": 0.55, "fp16": 0.0}
DISK_STAGED_COPY = 1.0
DISK_MARGIN = 1.1

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_source(options: ConvertOptions, progress: Progress) -> tuple[Path, dict[str, Any]]:
    """A local folder as is, or a hub id downloaded into the Hugging Face cache."""
    path = Path(options.source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelFormatError(f"{path} is a file; give the checkpoint's folder")
        return path.resolve(), {"id": str(path.resolve()), "content_hash": content_hash(path)}
    if not HUB_ID.match(options.source) or options.source.startswith((".", "/", "~")):
        raise ModelFormatError(f"{options.source}: no such folder (and not a hub id like THUDM/GLM-4-9B-0414)")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        raise Glm4EdgeError(f"{options.source} is a hub id but HF_HUB_OFFLINE is set; download it first on a "
                            f"connected machine: hf download {options.source} --local-dir DIR, then convert DIR")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    progress(f"downloading {options.source}")
    try:
        folder = snapshot_download(options.source, revision=options.revision,
                                   allow_patterns=["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt",
                                                   "*.py", "tokenizer*"])
    except RepositoryNotFoundError:
        raise ModelFormatError(f"{options.source} was not found on the hub (check the id, or log in for "
                               "gated models with `hf auth login`)") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise Glm4EdgeError(f"could not download {options.source} ({type(error).__name__}); on an offline "
                            "machine, download it elsewhere with `hf download ID --local-dir DIR` and convert "
                            "DIR") from None
    revision = Path(folder).name  # the snapshot folder is named after the commit
    return Path(folder), {"id": options.source, "revision": revision}


def content_hash(folder: Path) -> str:
    """A quick identity of a local checkpoint: config, tokenizer and the weight files' names and sizes."""
    digest = hashlib.sha256()
    for item in sorted(folder.iterdir()):
        if not item.is_file():
            continue
        digest.update(item.name.encode())
        if item.suffix in (".safetensors", ".bin"):
            digest.update(str(item.stat().st_size).encode())
            with item.open("rb") as handle:
                digest.update(handle.read(1 << 20))
        elif item.stat().st_size < 50 << 20:
            digest.update(item.read_bytes())
    return "sha256:" + digest.hexdigest()


def default_output(folder: Path, options: ConvertOptions) -> Path:
    name = Path(options.source.rstrip("/")).name.lower() if options.source else folder.name.lower()
    device = "" if options.device == "cpu" else f"-{options.device}"
    return Path(options.models_dir) / f"{name}-{options.weight_format}{device}-ov"


def resource_needs(source: families.SourceInfo, source_bytes: int, weight_format: str,
                   staged_copy: bool) -> tuple[int, int]:
    """(disk, RAM) bytes a conversion needs free, from the constants above.

    GLM-4V: the language model and the vision tower are converted one after the other, never resident
    together, so RAM is the larger of the two stages (`vision_export.tower_ram_bytes`); disk adds the
    vision-encoder IR and the split language IR's second copy, and the tower's own shards are not
    staged or exported to an fp16 IR (they are `source_bytes` less the language part's).
    """
    from . import vision_export

    compressed = DISK_COMPRESSED[weight_format]
    tower_bytes = vision_export.checkpoint_tower_bytes(source.config) if source.vision else 0
    language_bytes = max(source_bytes - tower_bytes, 0)
    disk = (DISK_FP16_IR + compressed + (DISK_STAGED_COPY if staged_copy else 0.0)) * language_bytes
    working = 0.0
    if weight_format != "fp16":
        largest = _largest_matrix_bytes(source.config, source.family)
        working = max(RAM_LARGEST_MATRIX_COPIES * largest, compressed * language_bytes)
    ram = RAM_BASE_BYTES + working
    if source.vision:
        # split_language_model writes the (compressed) language IR again before deleting the first copy
        disk += (compressed or 1.0) * language_bytes + vision_export.tower_ir_bytes(source.config, weight_format)
        ram = max(ram, vision_export.tower_ram_bytes(source.config, weight_format))
    return int(disk * DISK_MARGIN), int(ram * RAM_MARGIN)

def check_resources(source_bytes: int, parent: Path, need_disk: int, need_ram: int) -> None:
    import psutil

    existing, free_disk = free_disk_at(parent)
    if free_disk < need_disk:
        raise Glm4EdgeError(f"not enough disk: converting needs about {_gb(need_disk)} free next to the output, "
                            f"{existing} has {_gb(free_disk)}; free space or choose another -o "
                            "(or --no-resource-check)")
    available = psutil.virtual_memory().available
    if available < need_ram:
        raise Glm4EdgeError(f"not enough memory: converting a {_gb(source_bytes)} checkpoint needs about "
                            f"{_gb(need_ram)} of RAM, {_gb(available)} is available; close programs or convert "
                            "on a larger machine (or --no-resource-check)")


def _gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB"


def _largest_matrix_bytes(config: dict[str, Any], family: str) -> int:
    """fp16 bytes of the embedding (or lm_head), the biggest matrix of every GLM-4."""
    if family == "chatglm":
        config = families.legacy_glm_config(config)
    return 2 * int(config.get("vocab_size", 0)) * int(config.get("hidden_size", 0))


def reduction_channels(config: dict[str, Any], family: str) -> dict[str, int]:
    """Input channels of each kind of compressed matrix (what a group size must divide), by name."""
    if family == "chatglm":
        config = families.legacy_glm_config(config)
    hidden, heads = int(config.get("hidden_size", 0)), int(config.get("num_attention_heads", 1))
    head_dim = int(config.get("head_dim") or hidden // max(heads, 1))
    return {"hidden size": hidden, "attention output (heads x head_dim)": heads * head_dim,
            "MLP intermediate size": int(config.get("intermediate_size", 0))}


def _count_parameters(config: dict[str, Any], family: str) -> int:
    if family == "chatglm":
        config = families.legacy_glm_config(config)
    hidden, ffn = config.get("hidden_size", 0), config.get("intermediate_size", 0)
    layers, vocab = config.get("num_hidden_layers", 0), config.get("vocab_size", 0)
    heads, kv = config.get("num_attention_heads", 1), config.get("num_key_value_heads", 1)
    head_dim = config.get("head_dim") or hidden // max(heads, 1)
    attention = hidden * head_dim * (2 * heads + 2 * kv)
    return int(layers * (attention + 3 * hidden * ffn) + 2 * vocab * hidden)


def prepare_source(source: families.SourceInfo, staged: Path, adapter: lora.LoraAdapter | None,
                   options: ConvertOptions):
    """The folder optimum exports from, and its (possibly rewritten) config."""
    if source.family == "chatglm":
        families.remap_legacy(source, staged, adapter)
        folder = staged
    elif adapter is not None:
        families.merge_lora_into(source, staged, adapter)
        folder = staged
    else:
        folder = source.folder
    config = families.read_config(folder)
    family = "glm" if source.family == "chatglm" else source.family
    if options.context and (scaled := families.apply_context(config, family, options.context)) != config:
        config = scaled
        if folder is source.folder:
            families.link_side_files(source.folder, staged, skip_weights=False)
            (staged / "config.json").unlink()
            folder = staged
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder, config
