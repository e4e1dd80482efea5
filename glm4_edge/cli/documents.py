"""What `chat` and `generate` share for documents (--file) and long-prompt progress."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..documents import Document, check_fits, document_prompt, read_document


def add_file_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file", action="append", default=[], type=Path, metavar="PATH",
                        help="a document for the model to read: PDF, DOCX, HTML, Markdown or text (repeatable)")


def read_files(args: argparse.Namespace) -> list[Document]:
    """Every --file, read before the model loads so a bad file fails in a second."""
    return [read_document(path) for path in args.file]


def attach_files(model, messages: list[dict], documents: Sequence[Document], max_new_tokens: int) -> None:
    """Put `documents` into the last user turn (GLM-4's document layout) and check that all of it fits."""
    if not documents:
        return
    messages[-1] = {**messages[-1], "content": document_prompt(documents, messages[-1]["content"])}
    check_fits(model, messages, documents, max_new_tokens)


class ProgressLine:
    """A long prompt's prefill progress on one rewritten stderr line (on a terminal), cleared when text starts."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.shown = False

    def update(self, chunk) -> None:
        progress = getattr(chunk, "progress", None)
        if not self.stream.isatty():
            return
        if progress is not None:
            self.stream.write(f"\r\033[2K{progress.summary()}")
            self.shown = True
        elif self.shown:
            self.stream.write("\r\033[2K")
            self.shown = False
        self.stream.flush()
