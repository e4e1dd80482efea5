"""`glm4_edge.json`: what convert did, read back by the runtime (device checks, prompt, context)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelFormatError

MANIFEST_NAME = "glm4_edge.json"
FORMAT_VERSION = 1


@dataclass
class Compression:
    weight_format: str = "fp16"  # int4 | int8 | fp16
    group_size: int | None = None  # -1 = channel-wise
    ratio: float | None = None
    sym: bool | None = None
    all_layers: bool | None = None
    awq: bool = False
    scale_estimation: bool = False
    dataset: str | None = None
    backup_precision: str | None = None
    bits_table: list[dict[str, Any]] = field(default_factory=list)  # NNCF's bit-width distribution
    # Measured at conversion against the source (glm4_edge.weight_error.WeightError.summary()):
    # mean/worst relative MSE, ratio to Q4_0 rounding of the same weights, and the quality class.
    weight_error: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    name: str
    family: str  # glm4 | glm | chatglm
    source: dict[str, Any] = field(default_factory=dict)  # id, revision or content_hash, adapter
    target_device: str = "cpu"
    preset: str = ""
    compression: Compression = field(default_factory=Compression)
    context_length: int = 0
    rope_scaling: dict[str, Any] | None = None
    reasoning: bool = False  # Z1: answers start with <think>
    generation_prefix: str = "<|assistant|>"
    stop_token_ids: list[int] = field(default_factory=list)
    npu: dict[str, int] = field(default_factory=dict)  # max_prompt_len, min_response_len
    size_bytes: dict[str, int] = field(default_factory=dict)  # source, output
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    format_version: int = FORMAT_VERSION
    # Relative path -> {"size": bytes, "sha256": hex} of every file but this manifest (glm4_edge.integrity);
    # empty for models converted before glm4-edge recorded them: those load, but cannot be verified.
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    # GLM-4V only (empty for text models): image size, token ids and counts, normalisation, position rule,
    # the vision encoder's weight format; written by convert.vision_export.finish_vision.
    vision: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        compression = values.get("compression") or {}
        compression_fields = Compression.__dataclass_fields__
        values["compression"] = Compression(**{k: v for k, v in compression.items() if k in compression_fields})
        return cls(**values)


def read_manifest(folder: Path) -> Manifest | None:
    """The folder's manifest, or None for a model exported by other tools (still loadable)."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return Manifest.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as error:
        raise ModelFormatError(f"{path} is not a valid glm4-edge manifest ({error}); reconvert the model "
                               "with `glm4-edge convert`") from None
