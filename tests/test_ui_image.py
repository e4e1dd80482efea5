"""The browser page's image upload (GLM-4V), in headless Chromium against the tiny converted GLM-4V model
(see test_ui.py for the browser fixtures and test_vision.py for the model)."""
# ruff: noqa: F811 (pytest fixtures imported from test_ui are parameters here by design)

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .test_ui import BOT, CHROMIUM, _open, _send, _serve, _wait_footers, browser, new_tab, page  # noqa: F401
from .test_vision import picture, png_bytes, png_header_only

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian chromium")

MAX_NEW_TOKENS = 6  # random weights answer nonsense: a few tokens show it streams
USER = "#chatbot .user-row"  # one row per user message (an image and its text are two parts of it)


@pytest.fixture(scope="module")
def vision_desktop(glm4v_model):
    with _serve(glm4v_model, max_new_tokens=MAX_NEW_TOKENS) as served:
        yield served


def _upload(page, path: Path) -> None:
    page.set_input_files("#image input[type=file]", str(path))


def _photo(folder: Path, name: str, seed: int) -> Path:
    path = folder / name
    path.write_bytes(png_bytes(picture(seed)))
    return path


def _last_note(page, words: str) -> str:
    """The chat's last message, once it holds `words`."""
    page.locator(BOT, has_text=words).last.wait_for()
    return page.locator(BOT).last.inner_text()


def _answer_text(page) -> str:
    """The last answer's text, without its footer."""
    return page.locator(BOT).last.inner_text().rsplit("\n", 1)[0]


def test_an_image_goes_with_the_message_and_shows_in_the_chat(vision_desktop, page, tmp_path):
    url, model = vision_desktop
    photo = _photo(tmp_path, "photo.png", 3)
    _open(page, url)
    _upload(page, photo)
    page.locator("#image img").first.wait_for()  # the preview
    page.click("#send")  # an image alone is not a message: the page asks for words with it
    _last_note(page, "Add a question or an instruction for the image")
    _send(page, "What is in the picture?")
    footer = _wait_footers(page, 1)
    user = page.locator(USER).first
    user.locator("img").first.wait_for()  # the image sits in the chat history, with the question
    assert "What is in the picture?" in user.inner_text()
    assert page.locator('#chatbot button[aria-label="Share"]').first.is_hidden()  # it would post to Hugging Face
    page.locator("#image img").wait_for(state="detached")  # sent with the message: the box is empty again
    # The page's answer is the runtime's own answer for that image and question (greedy decoding).
    expected = model.generate("What is in the picture?", image=photo, max_new_tokens=MAX_NEW_TOKENS,
                              temperature=0)
    assert re.search(r" · (\d+) tokens", footer).group(1) == str(expected.stats.generated_tokens), footer
    assert expected.text.strip() and expected.text.strip() in _answer_text(page), (expected.text, footer)

    # A second image in the same conversation: said in the chat, and it waits in the box for a new one.
    second = _photo(tmp_path, "second.png", 4)
    _upload(page, second)
    assert "one image per conversation" in _last_note(page, "one image per conversation")
    _send(page, "And this one?")
    _last_note(page, "one image per conversation")
    assert page.locator(USER).count() == 1 and page.input_value("#prompt textarea") == "And this one?"
    page.click("#clear")
    page.wait_for_function("(sel) => document.querySelectorAll(sel).length === 0", arg=BOT)
    assert page.locator("#image img").count() == 1  # Clear keeps the waiting image
    _send(page, "And this one?")
    _wait_footers(page, 1)
    page.locator(USER).first.locator("img").first.wait_for()


BAD_FILES = {
    "notes.png": (b"this is not an image at all", "not an image"),
    "empty.png": (b"", "0 bytes"),
    "cut.png": (png_bytes(picture(6))[:2000], "truncated"),
    # A decompression-bomb shape: the header says 20000x20000, refused from the header before decoding.
    "huge.png": (png_header_only(20000, 20000), "megapixel limit"),
}


def test_a_bad_image_is_one_line_in_the_chat_and_leaves_the_box(vision_desktop, page, tmp_path):
    url, _ = vision_desktop
    _open(page, url)
    for name, (data, words) in BAD_FILES.items():
        path = tmp_path / name
        path.write_bytes(data)
        _upload(page, path)
        note = _last_note(page, words)
        assert name in note and "\n" not in note.strip() and len(note) < 300, note
        assert "/tmp" not in note and "gradio" not in note  # the file's own name, not the server's cache path
        page.locator("#image img").wait_for(state="detached")
    _send(page, "Still there?")  # nothing crashed: the page answers
    _wait_footers(page, 1)


def test_kiosk_offers_the_image_upload_unless_its_config_turns_it_off(glm4v_model, page):
    from glm4_edge.ui import KioskConfig

    with _serve(glm4v_model, KioskConfig()) as (url, _):
        _open(page, url)
        assert page.locator("#image").is_visible()
        assert page.locator("#upload").count() == 0  # documents stay off in a kiosk
    with _serve(glm4v_model, KioskConfig(allow_images=False)) as (url, _):
        _open(page, url)
        assert page.locator("#image").count() == 0


def test_kiosk_idle_reset_empties_a_waiting_image(glm4v_model, page, tmp_path):
    """The next visitor must not find the last one's photo in the box, sent or not."""
    from glm4_edge.ui import KioskConfig

    with _serve(glm4v_model, KioskConfig(idle_minutes=0.03)) as (url, _):  # 1.8 s
        _open(page, url)
        _upload(page, _photo(tmp_path, "visitor.png", 5))
        page.locator("#image img").first.wait_for()
        page.locator("#image img").wait_for(state="detached", timeout=15_000)


def test_a_text_only_model_shows_no_image_control(scripted_model, page):
    with _serve(scripted_model) as (url, _):
        _open(page, url)
        assert page.locator("#upload").count() == 1 and page.locator("#image").count() == 0


def test_kiosk_config_reads_allow_images(tmp_path):
    from glm4_edge.errors import Glm4EdgeError
    from glm4_edge.ui import load_kiosk_config

    config = tmp_path / "kiosk.toml"
    config.write_text("allow_images = false\n")
    assert load_kiosk_config(config).allow_images is False
    config.write_text("")
    assert load_kiosk_config(config).allow_images is True
    config.write_text("allow_images = 1\n")
    with pytest.raises(Glm4EdgeError, match="allow_images must be true or false"):
        load_kiosk_config(config)


def test_the_document_context_check_counts_the_image(glm4v_model, tmp_path):
    """A message with documents and an image: the check before answering counts the image's positions too."""
    import glm4_edge
    from glm4_edge.documents import check_fits

    model = glm4_edge.load(glm4v_model)
    photo = _photo(tmp_path, "photo.png", 3)
    plain = [{"role": "user", "content": "What is in the picture?"}]
    with_image = [{**plain[0], "image": str(photo)}]
    assert check_fits(model, with_image, [], 8) - check_fits(model, plain, [], 8) == model.vision["feature_tokens"]
    prompt_tokens = list(model.stream(with_image, max_new_tokens=1))[-1].stats.prompt_tokens
    assert check_fits(model, with_image, [], 8) == prompt_tokens  # what the runtime itself counts
