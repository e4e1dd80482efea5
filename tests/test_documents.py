"""Documents: extraction per format, bad input as one line, the GLM-4 document prompt, the context check."""

from __future__ import annotations

import subprocess
import time

import pytest

from glm4_edge.documents import (
    DocumentError,
    DocumentTooLongError,
    check_fits,
    document_prompt,
    read_document,
)

from .conftest import CLI, REASONING_ANSWER


def pdf_bytes(*pages: str) -> bytes:
    """A minimal valid PDF with one line of Helvetica text per page (pypdf cannot write text itself)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", ""]
    kids = []
    for text in pages:
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        page_id, content_id = len(objects) + 1, len(objects) + 2
        kids.append(f"{page_id} 0 R")
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content_id} 0 R "
                       "/Resources << /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >> >>")
        objects.append(f"<< /Length {len(content)} >>\nstream\n{content.decode()}\nendstream")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>"
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def test_pdf_text_and_pages(tmp_path):
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf_bytes("Revenue grew 12 percent.", "Costs fell."))
    document = read_document(path)
    assert document.kind == "pdf" and document.pages == 2
    assert "Revenue grew 12 percent." in document.text and "Costs fell." in document.text


def test_encrypted_pdf_is_refused_but_an_empty_password_is_opened(tmp_path):
    from pypdf import PdfReader, PdfWriter

    source = tmp_path / "plain.pdf"
    source.write_bytes(pdf_bytes("Secret plans."))
    for password, name in (("hunter2", "locked.pdf"), ("", "open.pdf")):
        writer = PdfWriter(clone_from=PdfReader(source))
        writer.encrypt(user_password=password, owner_password="owner", algorithm="RC4-128")
        writer.write(tmp_path / name)
    with pytest.raises(DocumentError, match="encrypted"):
        read_document(tmp_path / "locked.pdf")
    assert "Secret plans." in read_document(tmp_path / "open.pdf").text


def test_docx_paragraphs_and_tables(tmp_path):
    import docx

    document = docx.Document()
    document.add_paragraph("第一章 总则")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "price", "42"
    document.save(tmp_path / "terms.docx")
    text = read_document(tmp_path / "terms.docx").text
    assert "第一章 总则" in text and "price | 42" in text


def test_html_drops_scripts_and_markup(tmp_path):
    path = tmp_path / "page.html"
    path.write_text("<html><head><style>p{}</style><script>var x=1;</script></head>"
                    "<body><h1>Title</h1><p>Body &amp; text</p></body></html>")
    document = read_document(path)
    assert document.kind == "html" and document.text == "Title\nBody & text"


@pytest.mark.parametrize("encoding", ["utf-8", "gb18030", "utf-16", "cp1252"])
def test_text_in_common_encodings(tmp_path, encoding):
    # A realistic paragraph: a few characters of GB18030 are ambiguous for any detector (they read as Korean).
    text = ("Le café était déjà froid. Élodie a reçu une lettre très étrange à la fenêtre de la façade. " * 3
            if encoding == "cp1252" else
            "长文档理解是大语言模型的重要能力。用户上传一份报告，模型需要阅读全文并回答问题，"
            "例如总结要点、查找数据。" * 2)
    path = tmp_path / "notes.md"
    path.write_bytes(text.encode(encoding))
    assert read_document(path).text == text.strip()


@pytest.mark.parametrize("make, words", [
    (lambda p: p.write_bytes(b""), "empty (0 bytes)"),
    (lambda p: p.write_bytes(b"\x7fELF\x02\x01\x00\x00" * 100), "binary file"),
    (lambda p: p.with_suffix(".pdf").write_bytes(b"%PDF-1.4 garbage garbage"), "not a readable PDF"),
    (lambda p: p.with_suffix(".pdf").write_bytes(pdf_bytes("")), "no text found in the PDF"),
    (lambda p: p.with_suffix(".docx").write_bytes(b"PK\x03\x04 not a zip"), "not a readable DOCX"),
    (lambda p: p.write_text("   \n\n  "), "no text found"),
])
def test_bad_files_are_one_line_errors(tmp_path, make, words):
    path = tmp_path / "doc.txt"
    make(path)
    target = next(p for p in tmp_path.iterdir())
    with pytest.raises(DocumentError) as raised:
        read_document(target)
    assert words in str(raised.value) and "\n" not in str(raised.value)


def test_a_2_gb_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.txt"
    with path.open("wb") as handle:
        handle.truncate(2 * 2**30)  # sparse: no disk used
    started = time.perf_counter()
    with pytest.raises(DocumentError, match="2,048 MiB is more than the 64 MiB"):
        read_document(path)
    assert time.perf_counter() - started < 1.0


def test_missing_file(tmp_path):
    with pytest.raises(DocumentError, match="no such file"):
        read_document(tmp_path / "nope.pdf")


def test_prompt_follows_the_composite_demo(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.txt").write_text("beta")
    documents = [read_document(tmp_path / "a.txt"), read_document(tmp_path / "b.txt")]
    assert document_prompt(documents, "Compare them.") == (
        "[File Name]\na.txt\n[File Content]\nalpha\n\n[File Name]\nb.txt\n[File Content]\nbeta"
        "\n\n\n2 files uploaded.\nCompare them.")


@pytest.fixture(scope="module")
def scripted(scripted_model):
    import glm4_edge

    return glm4_edge.load(scripted_model)


def test_a_document_that_does_not_fit_is_refused_with_both_numbers(scripted, tmp_path):
    path = tmp_path / "long.txt"
    path.write_text("lorem ipsum dolor sit amet " * 60)
    document = read_document(path)
    messages = [{"role": "user", "content": document_prompt([document], "Summarize.")}]
    saved = scripted.context_length
    scripted.context_length = 1000
    try:
        with pytest.raises(DocumentTooLongError) as raised:
            check_fits(scripted, messages, [document], max_new_tokens=200)
    finally:
        scripted.context_length = saved
    message = str(raised.value)
    assert "long.txt" in message and "context is 1,000 tokens" in message and "+ 200 for the answer" in message
    assert "--context 4096" in message and "shorter file" in message
    assert check_fits(scripted, messages, [document], max_new_tokens=200) < saved


def test_generate_with_files(scripted_model, tmp_path):
    (tmp_path / "a.md").write_text("# Notes\nThe answer is 42.")
    (tmp_path / "b.pdf").write_bytes(pdf_bytes("Second file."))
    result = subprocess.run([*CLI, "generate", str(scripted_model), "--temperature", "0", "-p", "What is it?",
                             "--file", str(tmp_path / "a.md"), "--file", str(tmp_path / "b.pdf")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert REASONING_ANSWER in result.stdout


@pytest.mark.parametrize("content, words", [(b"", "empty (0 bytes)"), (b"\x00\x01\x02" * 50, "binary file")])
def test_generate_bad_file_is_one_line_and_exit_2(scripted_model, tmp_path, content, words):
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    result = subprocess.run([*CLI, "generate", str(scripted_model), "-p", "q", "--file", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_generate_refuses_a_document_longer_than_the_context(scripted_model, tmp_path):
    path = tmp_path / "long.txt"
    path.write_text("lorem ipsum dolor sit amet " * 3000)
    result = subprocess.run([*CLI, "generate", str(scripted_model), "-p", "Summarize.", "--file", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "do not fit" in result.stderr and "long.txt" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_chat_file_and_slash_file(scripted_model, tmp_path):
    (tmp_path / "a.md").write_text("alpha")
    (tmp_path / "b.txt").write_text("beta")
    (tmp_path / "empty.txt").write_bytes(b"")
    result = subprocess.run([*CLI, "chat", str(scripted_model), "--temperature", "0", "--file", str(tmp_path / "a.md")],
                            input=f"First?\n/file {tmp_path / 'empty.txt'}\n/file {tmp_path / 'b.txt'}\nSecond?\n",
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "attached a.md (5 characters) to your first message" in result.stderr
    assert "empty (0 bytes)" in result.stderr
    assert "attached b.txt (4 characters) to your next message" in result.stderr
    assert result.stdout.count(REASONING_ANSWER) == 2


def test_chat_detaches_a_file_that_does_not_fit(scripted_model, tmp_path):
    """Kept attached, a refused file refused every later message until /clear (found by a new-user trial)."""
    path = tmp_path / "long.txt"
    path.write_text("lorem ipsum dolor sit amet " * 3000)
    result = subprocess.run([*CLI, "chat", str(scripted_model), "--temperature", "0"],
                            input=f"/file {path}\nSummarize.\nHello?\n", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("do not fit") == 1 and "long.txt detached" in result.stderr
    assert "or lower --max-new-tokens" not in result.stderr  # the prompt alone is over the context
    assert result.stdout.count(REASONING_ANSWER) == 1  # the next message is answered


def test_context_errors_suggest_fewer_answer_tokens_only_when_that_helps():
    from glm4_edge.errors import ContextOverflowError
    from glm4_edge.server_common import from_glm4_edge_error

    fits_alone, too_long = ContextOverflowError(100, 50, 120), ContextOverflowError(130, 50, 120)
    assert "lower max_new_tokens" in str(fits_alone) and "lower max_new_tokens" not in str(too_long)
    assert "lower max_tokens" in from_glm4_edge_error(fits_alone).message
    assert "lower max_tokens" not in from_glm4_edge_error(too_long).message
