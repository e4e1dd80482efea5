"""The model store: converted models by name, in one folder (`$GLM4_EDGE_HOME`).

Every verb that takes a model resolves it here (`resolve`): an existing folder path first, then a
store name. Entries are plain model folders named `<checkpoint>-<format>[-<device>]`
(`glm-4-9b-0414-int4`, `glm-4-9b-0414-int4-npu`), written atomically by `convert`, `run` and `unpack`
(a hidden temporary sibling, renamed at the end) under a per-name lock, so two processes never
build the same entry at once and an interrupted one leaves no half entry.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath

from .errors import Glm4EdgeError, ModelFormatError
from .images import LANGUAGE_MODEL_XML
from .manifest import MANIFEST_NAME

HOME_ENV = "GLM4_EDGE_HOME"
APP_NAME = "glm4-edge"
DEFAULT_WEIGHT_FORMAT = "int4"
DEFAULT_PRESET = "cpu"
LOCKS_DIR = ".locks"
# Lower case, digits and . _ -, like a folder name every OS and shell accepts without quoting.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
# Hidden siblings that convert (`.NAME.tmp-PID`, `.NAME.old-PID`), unpack and rm leave while working.
WORK_FOLDER = re.compile(r"\.(?P<name>.+)\.(?:tmp|old|rm)-(?P<pid>\d+)")
# The manifest key the compression presets record a quality class under (shown by `list` when present).


def home() -> Path:
    """`$GLM4_EDGE_HOME`, else the user's data directory: ~/.local/share/glm4-edge ($XDG_DATA_HOME),
    ~/Library/Application Support/glm4-edge on macOS, %LOCALAPPDATA%\\glm4-edge on Windows."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        xdg = os.environ.get("XDG_DATA_HOME", "")
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share"  # the XDG spec's rule
    return base / APP_NAME


def is_name(text: str) -> bool:
    return bool(NAME_PATTERN.fullmatch(text))


def check_name(name: str) -> str:
    if not is_name(name):
        raise Glm4EdgeError(f"{name!r} is not a valid model name: use lower-case letters, digits, '.', '_' "
                            "and '-', starting with a letter or digit (e.g. glm-4-9b-0414-int4)")
    return name


def slug(text: str | Path) -> str:
    """The last part of a path or hub id as a store name: THUDM/GLM-4-9B-0414 -> glm-4-9b-0414."""
    base = PurePath(str(text).rstrip("/\\")).name.lower()
    return re.sub(r"[^a-z0-9._-]+", "-", base).strip("-._")[:100] or "model"


def entry_name(source: str | Path, weight_format: str = DEFAULT_WEIGHT_FORMAT, device: str = DEFAULT_PRESET,
               adapter: str | Path | None = None) -> str:
    """The store name for a checkpoint (folder or hub id): THUDM/GLM-4-9B-0414 -> glm-4-9b-0414-int4."""
    parts = [slug(source)] + ([slug(adapter)] if adapter else []) + [weight_format]
    if device != DEFAULT_PRESET:
        parts.append(device)
    return "-".join(parts)[:128]


def find(text: str | Path) -> Path | None:
    """An existing path as given, else the store entry of that name, else None."""
    path = Path(text).expanduser()
    if path.exists():
        return path
    if is_name(str(text)) and (home() / str(text)).is_dir():
        return home() / str(text)
    return None


def resolve(text: str | Path) -> Path:
    """`find`, or a `ModelFormatError` that says where the store is and which names are close."""
    found = find(text)
    if found is not None:
        return found
    names = [entry.name for entry in entries()]
    close = difflib.get_close_matches(str(text).lower(), names, n=1, cutoff=0.6)
    if not close:
        wanted = entry_name(text)[: -len(DEFAULT_WEIGHT_FORMAT)]  # a checkpoint name: its entries start so
        close = [name for name in names if name.startswith(wanted)][:1]
    hint = f"did you mean {close[0]}? " if close else ""
    raise ModelFormatError(f"{text}: no such model folder or store name; {hint}`glm4-edge list` shows the "
                           f"store ({home()}), `glm4-edge run CHECKPOINT` or `glm4-edge convert` adds to it")


def entry_path(name: str) -> Path:
    """Where the entry `name` lives (whether or not it exists yet)."""
    return home() / check_name(name)


@dataclass
class Entry:
    """One store entry as `glm4-edge list` shows it."""

    name: str
    path: Path
    family: str
    weight_format: str
    quality: str | None
    device: str  # the conversion preset: cpu | gpu | npu
    size_bytes: int
    created: str  # ISO 8601, UTC
    source: str


def is_model_folder(path: Path) -> bool:
    """A converted model: a text model's openvino_model.xml, or a GLM-4V model's language IR."""
    return (path / "openvino_model.xml").is_file() or (path / LANGUAGE_MODEL_XML).is_file()


def entries() -> list[Entry]:
    """Every model in the store, by name; hidden work folders and stray files are skipped."""
    root = home()
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or not is_model_folder(path):
            continue
        found.append(_entry(path))
    return found


def _entry(path: Path) -> Entry:
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    created = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).isoformat(timespec="seconds")
    try:
        raw = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not an object")
    except (OSError, ValueError):
        raw = None
    if raw is None:  # exported by other tools (or a broken manifest): what config.json says
        try:
            family = str(json.loads((path / "config.json").read_text())["model_type"])
        except (OSError, ValueError, KeyError, TypeError):
            family = "unknown"
        return Entry(path.name, path, family, "unknown", None, "-", size, created, "")
    compression = raw.get("compression") or {}
    error = compression.get("weight_error") if isinstance(compression.get("weight_error"), dict) else {}
    quality = str(error["quality_class"]) if error.get("quality_class") else None  # measured by convert
    return Entry(path.name, path, str(raw.get("family", "unknown")), str(compression.get("weight_format", "?")),
                 quality, str(raw.get("target_device", "cpu")), size, str(raw.get("created") or created),
                 str((raw.get("source") or {}).get("id", "")))


@contextmanager
def lock(name: str) -> Iterator[bool]:
    """Hold the store's lock for `name`; yields False when another process held it and we waited."""
    from filelock import FileLock

    folder = home() / LOCKS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    file_lock = FileLock(str(folder / f"{check_name(name)}.lock"))
    waited = False
    try:
        file_lock.acquire(timeout=0)
    except TimeoutError:  # filelock.Timeout derives from it
        print(f"glm4-edge: waiting for another glm4-edge process that is writing {name} into the store",
              file=sys.stderr, flush=True)
        waited = True
        file_lock.acquire()
    try:
        yield not waited
    finally:
        file_lock.release()


def remove(name: str) -> int:
    """Delete the entry `name`; returns the bytes freed. Never touches anything outside the store."""
    path = home() / name
    if not is_name(name) or not path.is_dir():
        raise Glm4EdgeError(f"{name}: no such model in the store ({home()}); `glm4-edge list` shows the names "
                            "(rm deletes store entries only, never other folders)")
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    with lock(name):
        trash = home() / f".{name}.rm-{os.getpid()}"
        os.replace(path, trash)  # gone from the store at once, even if deleting the files is slow
        shutil.rmtree(trash, ignore_errors=True)
    return size


def clean_stale() -> int:
    """Remove work folders left by glm4-edge processes that died (SIGKILL, power loss); returns bytes freed."""
    import psutil

    root = home()
    if not root.is_dir():
        return 0
    freed = 0
    for path in root.iterdir():
        match = WORK_FOLDER.fullmatch(path.name)
        if not match or not path.is_dir() or psutil.pid_exists(int(match["pid"])):
            continue
        freed += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        shutil.rmtree(path, ignore_errors=True)
    return freed


def publish_folder(temp: Path, output: Path) -> None:
    """Move a finished folder into place (one rename); an old `output` (with --force) goes only after that.

    Shared by `convert` and `unpack`, so a model folder is never half there under its name.
    """
    old = None
    if output.exists():
        old = output.parent / f".{output.name}.old-{os.getpid()}"
        os.replace(output, old)
    try:
        os.replace(temp, output)
    except BaseException:
        if old is not None:
            os.replace(old, output)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def free_disk(path: Path) -> tuple[Path, int]:
    """(the nearest existing folder at or above `path`, its free bytes): where a new output will land."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    return existing, shutil.disk_usage(existing).free
