"""`pack` / `unpack`: a converted model as one archive for an offline laptop or kiosk, checked on arrival.

The archive is a plain POSIX tar (model weights barely compress, and every OS reads tar):
`NAME/<every model file>`, then, as its last member, `glm4-edge-bundle.json` with the size and
SHA-256 of every file, computed from the very bytes written. Being last, the index also proves the
archive is complete: a truncated copy has none. `pack` checks each file against the model's
manifest while reading it, so a model damaged before packing is refused. `unpack` accepts regular
files and folders under `NAME/` only (no links, devices or paths leading outside), extracts with
tarfile's "data" filter into a hidden folder of the store, checks every byte against the index
(and the index against the manifest's hashes) and only then renames the folder into place.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from . import integrity, store
from .errors import Glm4EdgeError, ModelFormatError
from .manifest import MANIFEST_NAME

INDEX_NAME = "glm4-edge-bundle.json"
BUNDLE_FORMAT = 1
DEFAULT_SUFFIX = ".tar"
Progress = Callable[[str], None]


@dataclass
class PackResult:
    archive: Path
    name: str
    files: int
    bytes: int
    seconds: float
    manifest_hashes: bool  # False: the model records none (older glm4-edge, other tools); the index still does


@dataclass
class UnpackResult:
    folder: Path
    name: str
    files: int
    bytes: int
    seconds: float
    manifest_hashes: bool  # False: a model converted before glm4-edge recorded hashes (checked against the index)


class _HashingReader:
    """File wrapper that hashes what tarfile copies out of it, so each file is read once."""

    def __init__(self, handle):
        self.handle = handle
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        return data


def pack(model: str | Path, archive: str | Path | None = None, *, force: bool = False,
         progress: Progress | None = None) -> PackResult:
    """Write `model` (a folder or store name) to `archive` (default `NAME.tar` here) atomically.

    Raises `ModelFormatError` when a file does not match the manifest (naming it), `Glm4EdgeError`
    for an existing archive without `force` or an unwritable place; a failed pack leaves nothing.
    """
    from .loading import check_model_folder

    progress = progress or (lambda message: None)
    started = time.perf_counter()
    folder = check_model_folder(model).resolve()
    name = folder.name if store.is_name(folder.name) else store.slug(folder.name)
    archive = Path(archive) if archive is not None else Path(f"{name}{DEFAULT_SUFFIX}")
    if archive.is_dir():
        archive = archive / f"{name}{DEFAULT_SUFFIX}"
    if archive.exists() and not force:
        raise Glm4EdgeError(f"{archive} already exists; pass --force to replace it or choose another -o")
    recorded = integrity.recorded_files(folder)
    integrity.check_sizes(folder, recorded)  # cheap; the hashes are compared while packing
    files = integrity.model_files(folder) + ([folder / MANIFEST_NAME] if (folder / MANIFEST_NAME).is_file() else [])
    temp = archive.parent / f".{archive.name}.tmp-{os.getpid()}"
    index: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(temp, "w", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_dir_info(name))
            for path in files:
                relative = path.relative_to(folder).as_posix()
                progress(f"packing {relative}")
                index[relative] = _add_file(tar, path, f"{name}/{relative}")
                expected = recorded.get(relative)
                if expected and expected.get("sha256") != index[relative]["sha256"]:
                    raise ModelFormatError(integrity.failure_line(folder, [f"{relative}: SHA-256 differs from "
                                                                           "the manifest"]) + "; nothing was packed")
            body = json.dumps({"format": BUNDLE_FORMAT, "name": name, "files": index}, indent=1).encode()
            info = tarfile.TarInfo(INDEX_NAME)
            info.size, info.mtime, info.mode = len(body), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(body))
        os.replace(temp, archive)
    except FileNotFoundError as error:
        raise Glm4EdgeError(f"cannot write {archive}: {error.strerror} ({error.filename}); choose another -o") \
            from None
    except OSError as error:
        if isinstance(error, PermissionError) or error.errno in (28, 30):  # EACCES, ENOSPC, EROFS
            raise Glm4EdgeError(f"cannot write {archive} ({error.strerror}); nothing was kept") from None
        raise
    finally:
        temp.unlink(missing_ok=True)
    total = sum(entry["size"] for entry in index.values())
    return PackResult(archive, name, len(index), total, time.perf_counter() - started, bool(recorded))


def _dir_info(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
    return info


def _add_file(tar: tarfile.TarFile, path: Path, arcname: str) -> dict[str, Any]:
    stat = path.stat()
    info = tarfile.TarInfo(arcname)
    info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
    with open(path, "rb") as handle:
        reader = _HashingReader(handle)
        tar.addfile(info, reader)
    return {"size": stat.st_size, "sha256": reader.digest.hexdigest()}


def unpack(archive: str | Path, *, name: str | None = None, force: bool = False,
           progress: Progress | None = None) -> UnpackResult:
    """Extract a `pack` archive into the store as `name` (default: the name it was packed under), verified.

    Raises `Glm4EdgeError` (one line) for a missing, truncated, corrupted or unsafe archive, a file
    whose SHA-256 does not match, an existing entry without `force`, or too little disk space.
    """
    progress = progress or (lambda message: None)
    started = time.perf_counter()
    archive = Path(archive).expanduser()
    if not archive.is_file():
        raise Glm4EdgeError(f"{archive}: no such archive file")
    try:
        with tarfile.open(archive, "r:") as tar:  # pack writes plain tar
            progress(f"reading {archive.name}")
            members = tar.getmembers()
            top, files, index = _check_members(archive, tar, members)
            target = store.check_name(name or top)
            destination = store.entry_path(target)
            if destination.exists() and not force:
                raise Glm4EdgeError(f"{target} is already in the store; pass --force to replace it (only after "
                                    "the new copy is verified) or --name to keep both")
            _check_space(archive, store.home(), sum(m.size for m in members))
            with store.lock(target):
                return _extract(archive, tar, members, top, target, index, force, progress, started)
    except (tarfile.TarError, EOFError, OSError, ValueError) as error:
        if isinstance(error, OSError) and error.errno == 28:
            raise Glm4EdgeError(f"the disk filled up while unpacking {archive}; nothing was kept") from None
        if isinstance(error, OSError) and not isinstance(error, tarfile.TarError) and error.filename:
            raise Glm4EdgeError(f"cannot unpack {archive}: {error.strerror} ({error.filename})") from None
        reason = (str(error).strip().splitlines() or [type(error).__name__])[-1].strip(" -")
        if not _starts_like_tar(archive):  # not damaged: never an archive (a wrong path, say)
            raise Glm4EdgeError(f"{archive} is not a tar archive, so not one `glm4-edge pack` made; give the "
                                ".tar that pack wrote") from None
        raise Glm4EdgeError(f"{archive} is truncated or corrupted ({reason}); copy it again") from None


def _starts_like_tar(archive: Path) -> bool:
    try:
        return tarfile.is_tarfile(archive)
    except OSError:
        return False


def _check_members(archive: Path, tar: tarfile.TarFile,
                   members: list[tarfile.TarInfo]) -> tuple[str, list[tarfile.TarInfo], dict[str, Any]]:
    """The top folder, its files and the parsed index; refuses anything but plain files under one folder."""
    if not members or members[-1].name != INDEX_NAME or not members[-1].isfile():
        raise Glm4EdgeError(f"{archive} is truncated or corrupted (no {INDEX_NAME} at its end), or was not made "
                            "by `glm4-edge pack`; copy it again")
    for member in members[:-1]:
        parts = PurePosixPath(member.name).parts
        if member.name.startswith(("/", "\\")) or ".." in parts or "\\" in member.name:
            raise Glm4EdgeError(f"refusing {archive}: {member.name!r} points outside the model folder")
        if not (member.isfile() or member.isdir()):
            raise Glm4EdgeError(f"refusing {archive}: {member.name!r} is a link or special file, not a model file")
    tops = {PurePosixPath(m.name).parts[0] for m in members[:-1] if PurePosixPath(m.name).parts}
    if len(tops) != 1:
        raise Glm4EdgeError(f"{archive} must hold exactly one model folder, found {len(tops)}")
    top = tops.pop()
    try:
        index = json.loads(tar.extractfile(members[-1]).read())
        files = index["files"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise Glm4EdgeError(f"{archive}: its {INDEX_NAME} is damaged; copy the archive again") from None
    listed = {f"{top}/{relative}" for relative in files}
    present = {m.name for m in members[:-1] if m.isfile()}
    if listed != present:
        odd = sorted(listed ^ present)[0]
        raise Glm4EdgeError(f"{archive}: {odd} is {'missing' if odd in listed else 'not in the index'}; the "
                            "archive is incomplete or was altered")
    return top, [m for m in members[:-1] if m.isfile()], index


def _check_space(archive: Path, root: Path, needed: int) -> None:
    existing, free = store.free_disk(root)
    if free < needed:
        raise Glm4EdgeError(f"not enough disk to unpack {archive}: {needed / 1e9:.2f} GB needed, {existing} has "
                            f"{free / 1e9:.2f} GB free")


def _extract(archive: Path, tar: tarfile.TarFile, members: list[tarfile.TarInfo], top: str, target: str,
             index: dict[str, Any], force: bool, progress: Progress, started: float) -> UnpackResult:
    root = store.home()
    root.mkdir(parents=True, exist_ok=True)
    destination = root / target
    if destination.exists() and not force:  # made by another process while we waited for the lock
        raise Glm4EdgeError(f"{target} is already in the store; pass --force to replace it or --name to keep both")
    work = root / f".{target}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        progress(f"extracting {archive.name}")
        tar.extractall(work, members=members[:-1], filter="data")
        folder = work / top
        files: dict[str, dict[str, Any]] = index["files"]
        problems = integrity.size_problems(folder, files)
        for relative, entry in files.items():
            if problems:
                break
            progress(f"verifying {relative}")
            if integrity.sha256_file(folder / relative) != entry.get("sha256"):
                problems.append(f"{relative}: SHA-256 differs from the archive's index")
        recorded = integrity.recorded_files(folder)
        for relative, entry in recorded.items():
            if not problems and (files.get(relative) or {}).get("sha256") != entry.get("sha256"):
                problems.append(f"{relative}: SHA-256 differs from the model's manifest")
        if problems:
            raise ModelFormatError(f"{archive} failed verification: {problems[0]}; nothing was unpacked. Copy "
                                   "the archive again")
        store.publish_folder(folder, destination)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total = sum(int(entry.get("size") or 0) for entry in files.values())
    return UnpackResult(destination, target, len(files), total, time.perf_counter() - started, bool(recorded))

