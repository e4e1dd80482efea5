"""The browser page's document upload, prefill progress and python tool, in headless Chromium (see test_ui.py)."""
# ruff: noqa: F811 (pytest fixtures imported from test_ui are parameters here by design)

from __future__ import annotations

from pathlib import Path

import pytest

from .test_ui import CHROMIUM, _open, _send, _serve, _wait_footers, browser, new_tab, page, screenshot  # noqa: F401

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian chromium")


@pytest.fixture(scope="module")
def desktop_docs(scripted_model):
    with _serve(scripted_model) as served:
        yield served


def _upload(page, *paths: Path) -> None:
    page.set_input_files("#upload input[type=file]", [str(p) for p in paths])
    for path in paths:
        page.locator("#upload").get_by_text(path.name).first.wait_for()


def test_upload_a_document_and_ask(desktop_docs, page, tmp_path):
    url, _ = desktop_docs
    notes = tmp_path / "notes.md"
    notes.write_text("# Notes\nThe answer is 42.")
    _open(page, url)
    _upload(page, notes)
    _send(page, "What is the answer?")
    _wait_footers(page, 1)
    user = page.locator("#chatbot [data-testid=user]").last.inner_text()
    assert "📄 notes.md · 25 characters" in user and "What is the answer?" in user
    assert page.locator("#upload").get_by_text("notes.md").count() == 0  # sent with the message
    screenshot(page, "ui-document.png")


def test_a_document_too_long_for_the_context_is_refused_in_the_chat(desktop_docs, page, tmp_path):
    url, _ = desktop_docs
    long = tmp_path / "long.txt"
    long.write_text("lorem ipsum dolor sit amet " * 3000)
    _open(page, url)
    _upload(page, long)
    _send(page, "Summarize.")
    error = page.locator("#chatbot", has_text="do not fit")
    error.wait_for()
    assert "long.txt" in error.inner_text() and "context is 4,096 tokens" in error.inner_text()


def test_a_bad_file_is_one_line_in_the_chat(desktop_docs, page, tmp_path):
    url, _ = desktop_docs
    binary = tmp_path / "image.bin"
    binary.write_bytes(b"\x00\x01\x02\x03" * 100)
    _open(page, url)
    _upload(page, binary)
    _send(page, "Read this.")
    page.locator("#chatbot", has_text="a binary file, not a document").wait_for()
    assert page.input_value("#prompt textarea") == "Read this."  # the question waits for a good file


def test_long_prompt_shows_prefill_progress(scripted_model, page):
    with _serve(scripted_model) as (url, model):
        model.prefill_threshold, model.prefill_first_chunk, model.prefill_chunk_s = 256, 256, 1e-6
        _open(page, url)
        page.evaluate("() => { window.sawProgress = false; new MutationObserver(() => {"
                      " if (document.querySelector('#chatbot').innerText.includes('reading the prompt'))"
                      " window.sawProgress = true; }).observe(document.querySelector('#chatbot'),"
                      " {subtree: true, childList: true, characterData: true}); }")
        _send(page, "The quick brown fox jumps over the lazy dog. " * 60)
        _wait_footers(page, 1)
        assert page.evaluate("() => window.sawProgress")
        assert "reading the prompt" not in page.inner_text("#chatbot")  # gone once the answer came


def test_kiosk_has_no_upload_unless_its_config_allows_it(scripted_model, page):
    from glm4_edge.ui import KioskConfig

    with _serve(scripted_model, KioskConfig()) as (url, _):
        _open(page, url)
        assert page.locator("#upload").count() == 0
    with _serve(scripted_model, KioskConfig(allow_upload=True)) as (url, _):
        _open(page, url)
        assert page.locator("#upload").count() == 1


def test_kiosk_idle_reset_empties_a_waiting_document(scripted_model, page, tmp_path):
    """As the image box (test_ui_image.py): the next visitor must not find the last one's file, sent or not."""
    from glm4_edge.ui import KioskConfig

    visitor = tmp_path / "visitor.md"
    visitor.write_text("The previous visitor's private notes.\n")
    with _serve(scripted_model, KioskConfig(allow_upload=True, idle_minutes=0.03)) as (url, _):  # 1.8 s
        _open(page, url)
        _upload(page, visitor)
        # Polled on the box's text: once the upload settles Gradio shows the name as "visitor" and ".md" in two
        # elements, so a locator for "visitor.md" finds nothing even while the file is still there.
        for _ in range(40):
            if "visitor" not in page.inner_text("#upload"):
                break
            page.wait_for_timeout(500)
        assert "visitor" not in page.inner_text("#upload"), "the idle reset left the last visitor's file in the box"


def test_kiosk_idle_reset_empties_a_typed_draft(scripted_model, page):
    """A question typed but never sent, before any conversation, is the last visitor's too."""
    from glm4_edge.ui import KioskConfig

    with _serve(scripted_model, KioskConfig(idle_minutes=0.03)) as (url, _):  # 1.8 s
        _open(page, url)
        page.locator("#prompt textarea").fill("my private draft")
        for _ in range(40):
            if page.locator("#prompt textarea").input_value() == "":
                break
            page.wait_for_timeout(500)
        assert page.locator("#prompt textarea").input_value() == "", "the idle reset left the last visitor's draft"


def test_python_tool_shows_code_and_output_in_collapsible_blocks(python_model, page):
    with _serve(python_model, python_tool=True) as (url, _):
        _open(page, url)
        _send(page, "What is 6*7?")
        _wait_footers(page, 1)
        code = page.locator("#chatbot .thought-group", has_text="python")
        output = page.locator("#chatbot .thought-group", has_text="output")
        assert code.count() >= 1 and output.count() >= 1
        output.first.click()  # collapsed until opened
        output.first.get_by_text("42").first.wait_for()
        code.first.click()
        code.first.get_by_text("print(6*7)").first.wait_for()
        screenshot(page, "ui-python-tool.png")


def test_python_tool_is_refused_in_kiosk_mode(scripted_model):
    import glm4_edge
    from glm4_edge import ui
    from glm4_edge.errors import Glm4EdgeError

    with pytest.raises(Glm4EdgeError, match="not available in kiosk mode"):
        ui.build_app(glm4_edge.load(scripted_model), ui.KioskConfig(), python_tool=True)
