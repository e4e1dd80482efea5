"""Size and SHA-256 of every file in a converted model: recorded by convert, checked on load and by verify.

`convert` writes the table into the manifest (`Manifest.files`) just before the finished model is
renamed into place. Every load compares file sizes (one `stat` per file, so a truncated copy fails
at once, naming the file); `glm4-edge verify`, `unpack`, and the start of a kiosk or server hash
every byte. Hashing ran at 1.4 GB/s from the page cache on the development machine (AMD EPYC with
SHA extensions), so a 5 GB INT4 GLM-4-9B takes about 4 s plus the time to read it from disk.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelFormatError
from .manifest import MANIFEST_NAME, read_manifest

DEFAULT_CHUNK_BYTES = 1 << 20  # 1 MiB reads: hashing speed levels off from here (measured 1.4-1.5 GB/s)
Progress = Callable[[str], None]


@dataclass
class VerifyReport:
    """What `verify` found. `verifiable` is False for a model whose manifest records no hashes."""

    folder: Path
    verifiable: bool
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # "openvino_model.bin: SHA-256 differs", first found first

    @property
    def ok(self) -> bool:
        return self.verifiable and not self.problems

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


def model_files(folder: Path) -> list[Path]:
    """Every regular file under `folder` except the manifest, sorted by relative path."""
    folder = Path(folder)
    manifest = folder / MANIFEST_NAME
    return sorted((p for p in folder.rglob("*") if p.is_file() and p != manifest),
                  key=lambda p: p.relative_to(folder).as_posix())


def sha256_file(path: Path, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def file_table(folder: Path, progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    """{relative path: {"size": bytes, "sha256": hex}} for every file but the manifest."""
    table = {}
    for path in model_files(folder):
        name = path.relative_to(folder).as_posix()
        if progress:
            progress(f"hashing {name}")
        table[name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return table


def recorded_files(folder: Path) -> dict[str, dict[str, Any]]:
    """The manifest's file table; empty when there is no manifest or it predates the table."""
    manifest = read_manifest(folder)
    return dict(manifest.files) if manifest is not None else {}


def size_problems(folder: Path, files: dict[str, dict[str, Any]]) -> list[str]:
    """Files missing or of the wrong size, as "name: why" lines; a stat per file, no reading."""
    problems = []
    for name, entry in files.items():
        path = Path(folder) / name
        try:
            size = path.stat().st_size
        except OSError:
            problems.append(f"{name}: missing")
            continue
        if size != entry.get("size"):
            problems.append(f"{name}: {size:,} bytes, the manifest says {entry.get('size'):,}")
    return problems


def check_sizes(folder: Path, files: dict[str, dict[str, Any]]) -> None:
    """Raise `ModelFormatError` naming the first missing or truncated file (the cheap check on every load)."""
    problems = size_problems(folder, files)
    if problems:
        raise ModelFormatError(failure_line(folder, problems))


def verify(folder: Path, progress: Progress | None = None) -> VerifyReport:
    """Hash every file the manifest lists and compare; sizes first, so a truncated copy fails fast."""
    folder = Path(folder)
    files = recorded_files(folder)
    report = VerifyReport(folder, verifiable=bool(files))
    if not files:
        return report
    started = time.perf_counter()
    report.problems = size_problems(folder, files)
    if not report.problems:
        for name, entry in files.items():
            if progress:
                progress(f"hashing {name}")
            if sha256_file(folder / name) != entry.get("sha256"):
                report.problems.append(f"{name}: SHA-256 differs from the manifest")
            report.bytes += int(entry.get("size") or 0)
    report.files = len(files)
    report.seconds = time.perf_counter() - started
    return report


def require_verified(folder: Path, progress: Progress | None = None) -> VerifyReport:
    """`verify`, raising `ModelFormatError` naming the file when a recorded hash does not match.

    A model without hashes passes (check `report.verifiable`): older models must keep loading.
    """
    report = verify(folder, progress)
    if report.problems:
        raise ModelFormatError(failure_line(folder, report.problems))
    return report


def failure_line(folder: Path, problems: list[str]) -> str:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return (f"{folder} failed verification: {problems[0]}{more}; the copy is damaged or incomplete: copy or "
            "unpack the model again, or reconvert it")
