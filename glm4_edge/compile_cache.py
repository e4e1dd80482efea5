"""OpenVINO's compile cache (CACHE_DIR), one folder per model, device, OpenVINO version and driver.

OpenVINO names each compiled blob by a hash of the model and its properties and never deletes one,
so after a model update, an OpenVINO upgrade or a driver update the old blobs stay on disk forever.
Keyed folders make the stale ones visible: each holds a record (ENTRY_FILE) of what it was compiled
for; `entries()` compares it with this machine, `prune()` deletes what can never be used again, and
`warm()` compiles ahead so a kiosk's first boot does not compile in front of a visitor.

GPU and NPU always cache (compiling a 9B model there takes minutes). CPU compiles in seconds, so it
uses a cache folder only once `warm()` made one.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import devices
from .errors import Glm4EdgeError

ENTRY_FILE = "glm4_edge_cache.json"
# Driver-version properties, asked in this order of whichever the plugin lists in SUPPORTED_PROPERTIES
# (the NPU plugin documents NPU_DRIVER_VERSION; other plugins vary by release).
DRIVER_PROPERTIES = ("NPU_DRIVER_VERSION", "GPU_DRIVER_VERSION", "DRIVER_VERSION")
NO_DRIVER = "none"
SAFE_NAME = re.compile(r"[^A-Za-z0-9_.+-]+")
FINGERPRINT_CHARS = 12
BLOB_SUFFIX = ".blob"


@lru_cache(maxsize=32)
def _fingerprint(xml: str, xml_mtime_ns: int, bin_size: int, bin_mtime_ns: int) -> str:
    digest = hashlib.sha256(Path(xml).read_bytes())
    digest.update(f"{bin_size}:{bin_mtime_ns}".encode())
    return digest.hexdigest()


def model_fingerprint(folder: Path) -> str:
    """sha256 of openvino_model.xml plus the weights' size and mtime: changes when the model is rewritten.

    The weights file itself is not hashed (gigabytes); a reconversion rewrites it, so its mtime changes.
    """
    xml, weights = Path(folder) / "openvino_model.xml", Path(folder) / "openvino_model.bin"
    xml_stat = xml.stat()
    bin_stat = weights.stat() if weights.is_file() else None
    return _fingerprint(str(xml.resolve()), xml_stat.st_mtime_ns, bin_stat.st_size if bin_stat else 0,
                        bin_stat.st_mtime_ns if bin_stat else 0)


def openvino_version() -> str:
    import openvino

    return openvino.get_version().split("-")[0]


def driver_version(device: str) -> str:
    """The device's driver version as its plugin reports it, or "none" (CPU, or a plugin without one)."""
    base = devices.base_device(device)
    if base in ("CPU", "AUTO", "HETERO", "MULTI"):
        return NO_DRIVER
    core = devices._core()
    try:
        supported = set(core.get_property(device, "SUPPORTED_PROPERTIES"))
    except Exception:  # the device is gone: nothing to ask
        return NO_DRIVER
    for key in DRIVER_PROPERTIES:
        if key in supported:
            try:
                return str(core.get_property(device, key))
            except Exception:  # listed but not readable on this driver
                continue
    return NO_DRIVER


@dataclass
class CacheRecord:
    """What one cache folder was compiled for (its ENTRY_FILE)."""

    model: str  # the model folder, resolved
    model_name: str
    fingerprint: str
    device: str
    openvino: str
    driver: str
    created: str
    last_used: str


@dataclass
class CacheEntry:
    path: Path
    record: CacheRecord | None
    size_bytes: int
    blobs: int
    status: str  # "current", or "stale: WHY", or "device absent"

    @property
    def stale(self) -> bool:
        return self.status.startswith("stale")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _slug(text: str) -> str:
    return SAFE_NAME.sub("_", text).strip("_") or "x"


def entry_path(folder: Path, device: str, root: Path | None = None) -> Path:
    """The cache folder for this model on this device, OpenVINO version and driver (not created)."""
    folder = Path(folder).resolve()
    root = root or devices.cache_root()
    model_part = f"{_slug(folder.name)}-{model_fingerprint(folder)[:FINGERPRINT_CHARS]}"
    device_part = _slug(f"{device.upper()}-ov{openvino_version()}-drv{driver_version(device)}")
    return root / model_part / device_part


def open_entry(folder: Path, device: str, root: Path | None = None) -> Path:
    """Create (or touch) the cache folder and its record; returns the path to give as CACHE_DIR."""
    path = entry_path(folder, device, root)
    path.mkdir(parents=True, exist_ok=True)
    record_file = path / ENTRY_FILE
    record = _read_record(path)
    if record is None:
        resolved = Path(folder).resolve()
        record = CacheRecord(str(resolved), resolved.name, model_fingerprint(resolved), device.upper(),
                             openvino_version(), driver_version(device), _now(), _now())
    else:
        record.last_used = _now()
    _discard_empty_blobs(path)
    tmp = record_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
    tmp.replace(record_file)
    return path


def _discard_empty_blobs(path: Path) -> None:
    """A blob of 0 bytes is what a compile killed mid-write leaves. OpenVINO recompiles over a blob it
    cannot import (measured here with a truncated CPU blob), but an empty one is only clutter."""
    for blob in path.glob(f"*{BLOB_SUFFIX}"):
        try:
            if blob.stat().st_size == 0:
                blob.unlink()
        except OSError:
            pass


def _read_record(path: Path) -> CacheRecord | None:
    try:
        data = json.loads((path / ENTRY_FILE).read_text())
        return CacheRecord(**{k: data[k] for k in CacheRecord.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cache_dir_for(folder: Path, device: str, *, cache: bool = True) -> Path | None:
    """CACHE_DIR for loading `folder` on `device`, or None for no compile cache.

    GPU/NPU/AUTO: always (unless cache=False). CPU: only when `warm` made the folder.
    """
    if not cache:
        return None
    base = devices.base_device(device)
    if base == "CPU":
        path = entry_path(folder, device)
        return open_entry(folder, device) if path.is_dir() else None
    if base in ("GPU", "NPU", "AUTO", "HETERO", "MULTI"):
        return open_entry(folder, device)
    return None


def _folder_size(path: Path) -> tuple[int, int]:
    size = blobs = 0
    for item in path.rglob("*"):
        if item.is_file():
            size += item.stat().st_size
            blobs += item.suffix == BLOB_SUFFIX
    return size, blobs


def _status(record: CacheRecord | None, available: list[str]) -> str:
    if record is None:
        return "stale: no record (left by an older glm4-edge or another tool)"
    if record.openvino != openvino_version():
        return f"stale: compiled by OpenVINO {record.openvino}, running {openvino_version()}"
    model = Path(record.model)
    if not (model / "openvino_model.xml").is_file():
        return "stale: model folder gone"
    if model_fingerprint(model) != record.fingerprint:
        return "stale: model rewritten since"
    base = devices.base_device(record.device)
    if base not in ("CPU", "AUTO", "HETERO", "MULTI") and not any(
            a == record.device or a.split(".")[0] == record.device for a in available):
        return "device absent"
    if record.driver != driver_version(record.device) and base not in ("AUTO", "HETERO", "MULTI"):
        return f"stale: driver {record.driver}, now {driver_version(record.device)}"
    return "current"


def entries(root: Path | None = None) -> list[CacheEntry]:
    """Every cache folder under the cache root, with its size and whether it can still be used.

    Blobs lying directly in the root (the layout before keyed folders) are one entry with no record.
    """
    root = root or devices.cache_root()
    available = devices.available_devices()
    found = []
    if not root.is_dir():
        return []
    for path in sorted(p.parent for p in root.glob(f"*/*/{ENTRY_FILE}")):
        size, blobs = _folder_size(path)
        record = _read_record(path)
        found.append(CacheEntry(path, record, size, blobs, _status(record, available)))
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix == BLOB_SUFFIX]
    if loose:
        found.append(CacheEntry(root, None, sum(p.stat().st_size for p in loose), len(loose),
                                _status(None, available)))
    return found


def prune(root: Path | None = None) -> list[CacheEntry]:
    """Delete the stale entries (never "current" or "device absent" ones); returns what was removed."""
    root = root or devices.cache_root()
    removed = []
    for entry in entries(root):
        if not entry.stale:
            continue
        if entry.path == root:  # loose blobs of the old layout: the keyed folders stay
            for blob in root.glob(f"*{BLOB_SUFFIX}"):
                blob.unlink(missing_ok=True)
        else:
            shutil.rmtree(entry.path, ignore_errors=True)
            parent = entry.path.parent
            if parent != root and not any(parent.iterdir()):
                parent.rmdir()
        removed.append(entry)
    return removed


@dataclass
class WarmResult:
    path: Path
    device: str
    compile_s: float
    size_bytes: int
    blobs: int


def warm(folder: Path, device: str, load: Callable[..., Any], **load_options: Any) -> WarmResult:
    """Compile `folder` for `device` into its cache folder, also on CPU, then free the pipeline.

    `load` is `glm4_edge.load`; `load_options` must match the later runs' (NPU lengths, properties),
    because OpenVINO's blob hash covers the compile properties.
    """
    from .device_bench import resolve_auto
    from .loading import check_model_folder

    folder = check_model_folder(folder)
    device = devices.check_device(resolve_auto(folder, device))
    path = open_entry(folder, device)
    started = time.perf_counter()
    try:
        model = load(folder, device, **load_options)
    except Glm4EdgeError:
        if not any(path.glob(f"*{BLOB_SUFFIX}")):
            shutil.rmtree(path, ignore_errors=True)  # nothing compiled: leave no empty entry behind
        raise
    elapsed = time.perf_counter() - started
    del model
    size, blobs = _folder_size(path)
    return WarmResult(path, device, elapsed, size, blobs)

