"""Where a conversion writes: a hidden temporary sibling of the output, renamed into place at the end.

An interrupted or failed conversion leaves neither a partial model nor temp litter, and an existing
output (with --force) is replaced only after the new one is complete.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from glm4_edge.errors import Glm4EdgeError
from glm4_edge.store import publish_folder as publish  # noqa: F401 - export.py publishes through here


def check_output(output: Path, force: bool) -> None:
    if output.exists() and not force:
        raise Glm4EdgeError(f"{output} already exists; pass --force to replace it (it is replaced only after "
                            "the new conversion succeeds) or choose another -o")
    if output.exists() and not output.is_dir():
        raise Glm4EdgeError(f"{output} is a file; choose a folder for -o")
    parent = output.parent if output.parent != Path("") else Path(".")
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise Glm4EdgeError(f"{existing} is a file; choose another -o")
    if not os.access(existing, os.W_OK):
        raise Glm4EdgeError(f"cannot write to {existing}; choose a writable -o")



@contextmanager
def staging_folder(output: Path):
    """A hidden sibling of `output`, removed on any failure or interrupt (with any parent folders made for it)."""
    made = []
    parent = output.parent.absolute()
    while not parent.exists():
        made.append(parent)
        parent = parent.parent
    output.parent.mkdir(parents=True, exist_ok=True)
    temp = output.parent / f".{output.name}.tmp-{os.getpid()}"
    if temp.exists():
        shutil.rmtree(temp)
    temp.mkdir()
    try:
        yield temp
    except OSError as error:
        if error.errno == 28:  # ENOSPC
            raise Glm4EdgeError(f"the disk filled up while writing {output}; nothing was kept. Free space "
                                "and convert again") from None
        raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
        for folder in made:  # innermost first; only folders still empty (the output was not published)
            try:
                folder.rmdir()
            except OSError:
                break
