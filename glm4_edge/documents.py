"""Documents for the prompt: text extraction (PDF, DOCX, HTML, Markdown, plain text) and the context check.

Documents go into the user turn the way GLM-4's official composite demo puts uploaded files there
(THUDM/GLM-4, composite_demo/src/conversation.py `FILE_TEMPLATE` and composite_demo/src/main.py):
each file as `[File Name]\\n{name}\\n[File Content]\\n{text}`, files joined by a blank line, then
three newlines, `{n} files uploaded.\\n` and the user's question. glm-4-9b-chat's long-context
("文档解读") mode was shown with exactly this layout.

Reading is bounded so bad input fails fast with one line: the file size is checked before anything is
read (`DEFAULT_MAX_FILE_BYTES`), PDFs are read up to `DEFAULT_MAX_PAGES` pages, and the extracted text
up to `DEFAULT_MAX_CHARS` characters (beyond any context glm4-edge runs). Nothing is ever truncated
silently: a document that does not fit is refused with the numbers (see `check_fits`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import Glm4EdgeError

# 64 MiB: a 1,000-page text PDF is a few MB; above this a file is almost surely not a document to chat with.
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PAGES = 2000
# GLM-4-9B-chat-1m's 1M-token context holds about 1.6M Chinese or 4M English characters.
DEFAULT_MAX_CHARS = 4_000_000
# Bytes sniffed for NUL bytes before a file of unknown type is treated as text.
SNIFF_BYTES = 8192
PREFERRED_ENCODINGS = ("utf_8", "utf_16", "gb18030", "big5", "shift_jis", "euc_jp", "cp949", "cp1252", "cp1251",
                       "latin_1")
ENCODING_CHAOS_MARGIN = 10.0  # percent
FILE_TEMPLATE = "[File Name]\n{file_name}\n[File Content]\n{file_content}"
FILES_NOTE = "{count} files uploaded.\n"

PDF_SUFFIXES = (".pdf",)
DOCX_SUFFIXES = (".docx",)
HTML_SUFFIXES = (".html", ".htm", ".xhtml")
# Everything else is read as text if it decodes: .txt, .md, .py, .json, .csv, ...


class DocumentError(Glm4EdgeError):
    """A file that cannot be used as a document; the message names the file and what to do."""


class DocumentTooLongError(DocumentError):
    """The documents and the conversation do not fit the model's context with the answer budget."""

    def __init__(self, message: str, needed_tokens: int, context: int):
        self.needed_tokens = needed_tokens
        self.context = context
        super().__init__(message)


@dataclass(frozen=True)
class Document:
    """Text extracted from one file. `pages` is None for formats without pages."""

    name: str
    text: str
    kind: str  # "pdf" | "docx" | "html" | "text"
    pages: int | None = None
    encoding: str | None = None

    @property
    def chars(self) -> int:
        return len(self.text)


def read_document(path: str | Path, *, name: str | None = None, max_bytes: int = DEFAULT_MAX_FILE_BYTES,
                  max_pages: int = DEFAULT_MAX_PAGES, max_chars: int = DEFAULT_MAX_CHARS) -> Document:
    """Extract the text of `path` (PDF, DOCX, HTML, Markdown or text in any common encoding).

    `name` is what the model is told the file is called (default: the file's name).
    Raises DocumentError (one line) for a missing, empty, oversized, binary, encrypted or unreadable file.
    """
    path = Path(path).expanduser()
    label = name or path.name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DocumentError(f"{path}: no such file") from None
    except OSError as error:
        raise DocumentError(f"{path}: cannot read it ({error.strerror or error})") from None
    if not path.is_file():
        raise DocumentError(f"{path}: not a file")
    if size == 0:
        raise DocumentError(f"{path}: the file is empty (0 bytes)")
    if size > max_bytes:
        raise DocumentError(f"{path}: {size / 2**20:,.0f} MiB is more than the {max_bytes / 2**20:,.0f} MiB a "
                            "document may be; split it or pass only the part you need")
    suffix = path.suffix.lower()
    try:
        if suffix in PDF_SUFFIXES:
            document = _read_pdf(path, label, max_pages)
        elif suffix in DOCX_SUFFIXES:
            document = _read_docx(path, label)
        elif suffix in HTML_SUFFIXES:
            document = _read_html(path, label)
        else:
            document = _read_text(path, label)
    except DocumentError:
        raise
    except OSError as error:
        raise DocumentError(f"{path}: cannot read it ({error.strerror or error})") from None
    text = document.text.strip()
    if not text:
        hint = " (scanned pages are images: run OCR first)" if document.kind == "pdf" else ""
        raise DocumentError(f"{path}: no text found in the {document.kind.upper()} file{hint}")
    if len(text) > max_chars:
        raise DocumentError(f"{path}: {len(text):,} characters of text is more than any context holds "
                            f"({max_chars:,} at most); pass a shorter file")
    return Document(document.name, text, document.kind, document.pages, document.encoding)


def _read_text(path: Path, label: str) -> Document:
    from charset_normalizer import from_bytes

    data = path.read_bytes()
    if data.startswith(b"%PDF-"):
        return _read_pdf(path, label, DEFAULT_MAX_PAGES)
    if b"\x00" in data[:SNIFF_BYTES] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DocumentError(f"{path}: a binary file, not a document (PDF, DOCX, HTML, Markdown or text)")
    best = _best_guess(from_bytes(data))
    if best is None:
        raise DocumentError(f"{path}: not text in any encoding charset-normalizer knows; "
                            "save it as UTF-8, PDF or DOCX")
    text = str(best)
    kind = "html" if text.lstrip()[:15].lower().startswith(("<!doctype html", "<html")) else "text"
    if kind == "html":
        return Document(label, _html_text(text), "html", encoding=best.encoding)
    return Document(label, text.replace("\r\n", "\n"), "text", encoding=best.encoding)


def _best_guess(matches):
    """charset-normalizer's guess, nudged toward the encodings documents really come in.

    On short texts several decodings look equally plausible (a GB18030 paragraph "reads" as Korean, a
    French cp1252 one as Baltic cp1257); among guesses within `ENCODING_CHAOS_MARGIN` of the best,
    the first of `PREFERRED_ENCODINGS` wins.
    """
    best = matches.best()
    if best is None:
        return None
    close = {m.encoding: m for m in matches if m.percent_chaos <= best.percent_chaos + ENCODING_CHAOS_MARGIN}
    return next((close[name] for name in PREFERRED_ENCODINGS if name in close), best)


def _read_html(path: Path, label: str) -> Document:
    document = _read_text(path, label)
    if document.kind == "html":
        return document
    return Document(label, _html_text(document.text), "html", encoding=document.encoding)


def _html_text(html: str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for element in soup(["script", "style", "noscript", "template"]):
        element.decompose()
    lines = (line.strip() for line in soup.get_text("\n").splitlines())
    return "\n".join(line for line in lines if line)


def _read_pdf(path: Path, label: str, max_pages: int) -> Document:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, PdfReadError

    # pypdf logs every malformed object it steps over; the user gets one line from us instead.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            try:
                unlocked = reader.decrypt("")  # many PDFs are "encrypted" with an empty user password
            except (DependencyError, NotImplementedError):
                unlocked = 0
            if not unlocked:
                raise DocumentError(f"{path}: the PDF is encrypted; save an unprotected copy (or print it "
                                    "to PDF) and pass that")
        count = len(reader.pages)
        if count > max_pages:
            raise DocumentError(f"{path}: {count:,} pages is more than {max_pages:,}; "
                                "pass only the pages you need")
        texts = [page.extract_text() or "" for page in reader.pages]
    except DocumentError:
        raise
    except FileNotDecryptedError:
        raise DocumentError(f"{path}: the PDF is encrypted; save an unprotected copy and pass that") from None
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as error:
        raise DocumentError(f"{path}: not a readable PDF ({type(error).__name__}: "
                            f"{str(error)[:120] or 'damaged file'})") from None
    text = "\n\n".join(t.strip() for t in texts if t.strip())
    return Document(label, text, "pdf", pages=count)


def _read_docx(path: Path, label: str) -> Document:
    import zipfile

    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as error:
        raise DocumentError(f"{path}: not a readable DOCX file ({type(error).__name__}); "
                            "save it again from Word or LibreOffice") from None
    parts = [paragraph.text for paragraph in document.paragraphs]
    for table in document.tables:  # tables are not paragraphs, but often hold what is asked about
        for row in table.rows:
            parts.append(" | ".join(cell.text.strip() for cell in row.cells))
    return Document(label, "\n".join(part for part in parts if part.strip()), "docx")


def read_documents(paths: Sequence[str | Path]) -> list[Document]:
    return [read_document(path) for path in paths]


def document_prompt(documents: Sequence[Document], question: str) -> str:
    """The user turn holding `documents` and the question, as GLM-4's composite demo builds it."""
    if not documents:
        return question
    files = "\n\n".join(FILE_TEMPLATE.format(file_name=d.name, file_content=d.text) for d in documents)
    return files + "\n\n\n" + FILES_NOTE.format(count=len(documents)) + question


def check_fits(model, messages: Sequence[dict], documents: Sequence[Document], max_new_tokens: int) -> int:
    """The rendered prompt's token count; DocumentTooLongError if it and the answer exceed the context.

    Counting happens before any generation, so a document that does not fit is refused with both
    numbers and what to do, never cut. `model` is a `glm4_edge.Model` (its `render`, `count_tokens`
    and `context_length`).
    """
    # A GLM-4V conversation's image takes positions its rendered text does not show.
    prompt_tokens = model.count_tokens(model.render(list(messages))) + model.image_tokens_in(messages)
    context = model.context_length
    if not context or prompt_tokens + max_new_tokens <= context:
        return prompt_tokens
    sizes = ", ".join(f"{d.name} {model.count_tokens(d.text):,} tokens" for d in documents)
    needed = prompt_tokens + max_new_tokens
    raise DocumentTooLongError(
        f"the documents do not fit: {sizes}; with the conversation the prompt is {prompt_tokens:,} tokens + "
        f"{max_new_tokens:,} for the answer = {needed:,}, but the model's context is {context:,} tokens. "
        f"Convert the model with `glm4-edge convert ... --context {_round_context(needed)}` (a long-context "
        "GLM-4)" + (", pass a shorter file, or lower --max-new-tokens" if prompt_tokens < context else
                    " or pass a shorter file"), needed, context)


def _round_context(tokens: int) -> int:
    """The next power of two, as rope-scaling contexts are usually given (32768, 131072, ...)."""
    return 1 << max(12, (tokens - 1).bit_length())
