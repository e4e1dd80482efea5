"""`glm4-edge ui` in a real headless Chromium (Playwright) against real OpenVINO models.

Desktop and kiosk pages are served in-process (fast, and the runtime can be inspected); one kiosk is
started through the CLI as a subprocess. Every browser request is checked: nothing may leave the
machine. Screenshots for the README land in docs/.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .conftest import FOUR_ANSWER, REASONING_ANSWER, REASONING_THOUGHT, REPO

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 880}
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
DOCS = REPO / "docs"
# The README's screenshots: refreshed only on request (GLM4_EDGE_SCREENSHOTS=docs make test), so that a
# test run leaves the tracked files alone.
SCREENSHOTS = os.environ.get("GLM4_EDGE_SCREENSHOTS")


def screenshot(page, name: str) -> None:
    folder = Path(SCREENSHOTS) if SCREENSHOTS else Path(tempfile.gettempdir()) / "glm4-edge-screenshots"
    folder = folder if folder.is_absolute() else REPO / folder
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / name))
UI_TIMEOUT_MS = 20_000
SERVER_START_S = 90
LOOP_MAX_NEW_TOKENS = 4000  # loop_model's context is 4096
LONG_CONTEXT = 1 << 20
FOOTER = ".answer-footer"
BOT = "#chatbot [data-testid=bot]"
AUTH = ("guide", "museum-2024")
WEATHER_TOOL = ('[{"type": "function", "function": {"name": "get_weather", "description": "Weather now", '
                '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]')

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian chromium")


# --- servers and browser -------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _serve(model_path: Path, kiosk_config=None, context_length: int | None = None,
           **options) -> Iterator[tuple[str, object]]:
    import glm4_edge
    from glm4_edge import ui

    model = glm4_edge.load(model_path)
    if context_length:
        model.context_length = context_length
    app = ui.build_app(model, kiosk_config, temperature=0.0, **options)
    port = _free_port()
    ui.launch(app, port=port, block=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", model
    finally:
        app.close()


@pytest.fixture(scope="module")
def desktop(scripted_model):
    with _serve(scripted_model) as served:
        yield served


@pytest.fixture(scope="module")
def looping(loop_model):
    with _serve(loop_model, max_new_tokens=LOOP_MAX_NEW_TOKENS) as served:
        yield served


@pytest.fixture(scope="module")
def long_looping(loop_model):
    """The loop model with room for the longest answer the page offers.

    At ~2000 tokens/s, 4000 tokens last two seconds: on a busy machine the browser can lag behind by
    that much. The loop checkpoint's next token depends on the last one only, so positions past its
    nominal 4096-token context are fine; the runtime is just told the context is larger.
    """
    from glm4_edge.ui import MAX_NEW_TOKENS_LIMIT

    with _serve(loop_model, context_length=LONG_CONTEXT, max_new_tokens=MAX_NEW_TOKENS_LIMIT) as served:
        yield served


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _leaves_machine(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https", "ws", "wss") and parts.hostname not in LOCAL_HOSTS


@pytest.fixture
def new_tab(browser):
    """Opens tabs, each its own browser session; a request to another host is blocked and fails the test."""
    contexts, outside = [], []

    def guard(route) -> None:
        if _leaves_machine(route.request.url):
            outside.append(route.request.url)
            route.abort()  # so a failing run never reaches the internet either
        else:
            route.continue_()

    def open_tab():
        context = browser.new_context(viewport=VIEWPORT)
        context.route("**/*", guard)
        contexts.append(context)
        tab = context.new_page()
        tab.set_default_timeout(UI_TIMEOUT_MS)
        return tab

    yield open_tab
    for context in contexts:
        context.close()
    assert not outside, f"the page tried to reach other hosts: {sorted(set(outside))}"


@pytest.fixture
def page(new_tab):
    return new_tab()


def _open(page, url: str) -> None:
    page.goto(url, wait_until="load")  # never "networkidle": Gradio keeps a connection open
    page.wait_for_selector("#prompt textarea")


def _send(page, text: str) -> None:
    page.fill("#prompt textarea", text)
    page.press("#prompt textarea", "Enter")


def _last_bot_text(page) -> str:
    return page.evaluate("(sel) => { const m = document.querySelectorAll(sel);"
                         " return m.length ? m[m.length - 1].innerText : ''; }", BOT)


def _wait_footers(page, count: int) -> str:
    page.wait_for_function("([sel, n]) => document.querySelectorAll(sel).length >= n", arg=[FOOTER, count])
    return page.locator(FOOTER).nth(count - 1).inner_text()


def _wait_answer(page, text: str) -> None:
    """Until the last bot message holds `text` (a kiosk's answers carry no footer to wait for)."""
    page.wait_for_function("([sel, text]) => { const m = document.querySelectorAll(sel);"
                           " return m.length > 0 && m[m.length - 1].innerText.includes(text); }", arg=[BOT, text])


def _watch_chat(page) -> None:
    page.evaluate("() => { window.chatChanged = false;"
                  " new MutationObserver(() => { window.chatChanged = true; })"
                  ".observe(document.querySelector('#chatbot'),"
                  " {subtree: true, childList: true, characterData: true}); }")


def _settle(page, quiet_s: float = 0.5) -> None:
    """After `_watch_chat`: wait for a change, then until the chat has not changed for `quiet_s`."""
    page.wait_for_function("() => window.chatChanged")
    last, since = None, time.monotonic()
    while time.monotonic() - since < quiet_s:
        text = page.inner_text("#chatbot")
        if text != last:
            last, since = text, time.monotonic()
        time.sleep(0.1)


# --- desktop -------------------------------------------------------------------------------------

def test_desktop_streams_reasoning_answer_and_stats(desktop, page):
    url, model = desktop
    _open(page, url)
    info = page.inner_text("#model-info")
    assert model.name in info and "glm4" in info and "fp16" in info and "CPU" in info
    assert page.locator("#settings").is_visible() and page.locator("#system-prompt textarea").is_visible()
    assert page.get_by_text("用三句话介绍一下长城。").is_visible()  # zh and en examples
    assert page.get_by_text("Write a haiku about a lighthouse at night.").is_visible()

    page.fill("#system-prompt textarea", "You are a concise assistant.")
    _send(page, "What is the answer? 答案是什么？")
    footer = _wait_footers(page, 1)
    assert re.fullmatch(r"TTFT \d+ ms · [\d.]+ tok/s · 14 tokens · CPU", footer), footer
    answer = _last_bot_text(page)
    assert answer.startswith(REASONING_ANSWER) and REASONING_THOUGHT not in answer

    # Z1 reasoning: a collapsed "Thinking" block above the answer that opens on click.
    thought = page.locator("#chatbot .thought-group").first
    assert "Thinking" in thought.inner_text()
    page.get_by_text(REASONING_THOUGHT).wait_for(state="hidden")  # open while thinking, closed when done
    thought.locator(".title").click()
    page.get_by_text(REASONING_THOUGHT).wait_for(state="visible")
    page.wait_for_timeout(600)  # the block slides open; let it finish before the screenshot
    screenshot(page, "ui-desktop.png")

    _watch_chat(page)
    page.click("#regenerate")
    _settle(page)
    assert page.locator("#chatbot [data-testid=user]").count() == 1  # the answer is replaced, not added
    assert page.locator(FOOTER).count() == 1
    assert _last_bot_text(page).startswith(REASONING_ANSWER)

    page.click("#clear")
    page.wait_for_function("(sel) => document.querySelectorAll(sel).length === 0", arg=BOT)


# The page records every length the answer shows, without round trips to the test.
RECORD_LENGTHS = """(sel) => { window.shown = [];
    new MutationObserver(() => { const m = document.querySelectorAll(sel);
        if (m.length) window.shown.push(m[m.length - 1].textContent.length); })
    .observe(document.querySelector('#chatbot'), {subtree: true, childList: true, characterData: true}); }"""
# The page itself presses Stop as soon as the answer shows: no round trips to the test, which on a
# busy machine can take longer than the loop model needs for thousands of tokens.
STOP_ON_FIRST_TEXT = """([sel, answers]) => { window.stopPressed = false;
    if (window.stopper) window.stopper.disconnect();
    window.stopper = new MutationObserver(() => { const m = document.querySelectorAll(sel);
        if (!window.stopPressed && m.length > answers && m[m.length - 1].textContent.includes('tick')) {
            window.stopPressed = true; document.querySelector('#stop').click(); } });
    window.stopper.observe(document.querySelector('#chatbot'),
                           {subtree: true, childList: true, characterData: true}); }"""


def test_answers_stream_token_by_token(looping, page):
    url, _ = looping
    _open(page, url)
    page.evaluate(RECORD_LENGTHS, BOT)
    _send(page, "count")
    footer = _wait_footers(page, 1)
    assert footer.endswith(f"{LOOP_MAX_NEW_TOKENS} tokens · CPU · length limit"), footer
    shown = [n for n in page.evaluate("() => window.shown") if n > 0]
    assert len(set(shown)) >= 5, shown  # many growing partial answers, not one final message
    assert shown == sorted(shown), shown


def test_stop_ends_generation_in_the_runtime(long_looping, page):
    from glm4_edge.ui import MAX_NEW_TOKENS_LIMIT

    url, model = long_looping
    _open(page, url)
    for attempt in (1, 2):  # the second answer proves the model is free again at once
        page.evaluate(STOP_ON_FIRST_TEXT, [BOT, attempt - 1])
        _send(page, f"count, take {attempt}")
        footer = _wait_footers(page, attempt)
        assert page.evaluate("() => window.stopPressed")
        assert footer.endswith("stopped"), footer
        generated = int(re.search(r"(\d+) tokens", footer).group(1))
        assert 0 < generated < MAX_NEW_TOKENS_LIMIT, footer
        stopped_text = _last_bot_text(page)
        assert "tick" in stopped_text
        time.sleep(0.5)
        assert _last_bot_text(page) == stopped_text  # nothing streams after Stop
        deadline = time.monotonic() + 5
        while model.busy and time.monotonic() < deadline:  # the runtime itself has stopped
            time.sleep(0.05)
        assert not model.busy


def test_each_tab_has_its_own_chat_and_answers_queue(long_looping, new_tab):
    url, _ = long_looping
    first, second = new_tab(), new_tab()
    for tab in (first, second):
        _open(tab, url)
    # The second tab must show its place in the queue, with no answer yet, while the first one streams.
    second.evaluate("""(sel) => { window.queued = false;
        new MutationObserver(() => { if (!document.querySelectorAll(sel).length
                && document.querySelector('#chatbot').innerText.includes('queue')) window.queued = true; })
        .observe(document.body, {subtree: true, childList: true, characterData: true}); }""", BOT)
    _send(first, "first tab")
    first.wait_for_function("(sel) => document.querySelectorAll(sel).length > 0", arg=BOT)
    _send(second, "second tab")
    second.wait_for_function("() => window.queued")
    second.evaluate(STOP_ON_FIRST_TEXT, [BOT, 0])
    first.click("#stop")
    _wait_footers(second, 1)  # its turn came once the first tab's answer ended
    _wait_footers(first, 1)
    for tab, mine, theirs in ((first, "first tab", "second tab"), (second, "second tab", "first tab")):
        users = tab.locator("#chatbot [data-testid=user]").all_inner_texts()
        assert users == [mine], users
        assert theirs not in tab.inner_text("#chatbot")


def test_errors_appear_in_the_chat(looping, page):
    url, model = looping
    _open(page, url)
    budget = page.locator("#max-new-tokens input[type=number]")
    budget.fill(str(model.context_length))  # no room left for the prompt
    budget.press("Enter")
    _send(page, "hello")
    page.get_by_text("exceeds the model's context").wait_for()
    assert "Error" in _last_bot_text(page)

    budget.fill("8")  # the page keeps working once the setting is fixed
    budget.press("Enter")
    _send(page, "hello again")
    footer = _wait_footers(page, 1)
    assert "8 tokens" in footer and footer.endswith("length limit"), footer

    page.get_by_text("Tools (JSON list of function schemas)").click()
    page.fill("#tools textarea", "[not json")
    _send(page, "and now?")
    page.get_by_text("Tools must be a JSON list").wait_for()
    page.fill("#tools textarea", "")
    _send(page, "and now, without tools?")  # the tab is not stuck after a bad setting
    _wait_footers(page, 2)


def test_finish_reason_and_command_line_options_reach_the_page(four_token_model, page):
    with _serve(four_token_model, max_new_tokens=5) as (url, _):
        _open(page, url)
        _send(page, "hi")
        footer = _wait_footers(page, 1)
        # Four tokens and the end of turn: the answer ended on the last allowed token, not at the limit.
        assert footer.endswith("5 tokens · CPU"), footer
        assert _last_bot_text(page).startswith(FOUR_ANSWER)
        budget = page.locator("#max-new-tokens input[type=number]")
        budget.fill("4")
        budget.press("Enter")
        _send(page, "again")
        footer = _wait_footers(page, 2)
        assert footer.endswith("4 tokens · CPU · length limit"), footer
    # Options the page has no control for (`glm4-edge ui --stop ... --top-k ...`) still reach the runtime.
    with _serve(four_token_model, stop=[" three"], top_k=1, presence_penalty=0.5) as (url, _):
        _open(page, url)
        _send(page, "hi")
        _wait_footers(page, 1)
        answer = _last_bot_text(page)
        assert answer.startswith("One two") and "three" not in answer and "length limit" not in answer


def test_tool_calls_are_shown_as_tool_calls(tool_model, page):
    with _serve(tool_model) as (url, _):
        _open(page, url)
        page.get_by_text("Tools (JSON list of function schemas)").click()
        page.fill("#tools textarea", WEATHER_TOOL)
        _send(page, "What's the weather in Beijing?")
        footer = _wait_footers(page, 1)
        assert footer.endswith("tool call"), footer
        call = page.locator("#chatbot .thought-group", has_text="Tool call: get_weather")
        assert call.count() == 1
        call.get_by_text('"city": "Beijing"').wait_for()  # shown open: it is the whole answer


# --- kiosk ---------------------------------------------------------------------------------------

KIOSK_TOML = """\
title = "博物馆问答机"
welcome = "你好！我可以回答关于展品的问题。点一个问题开始吧。"
language = "zh"
idle_minutes = 5
examples = ["青铜器是怎么铸造的？", "What is this museum about?"]
system_prompt = "你是博物馆的导览助手，回答要简短。"
"""


@pytest.fixture(scope="module")
def kiosk_cli(scripted_model, tmp_path_factory):
    """`glm4-edge ui --kiosk --config ... --auth ...` as a real process."""
    config = tmp_path_factory.mktemp("kiosk") / "kiosk.toml"
    config.write_text(KIOSK_TOML, encoding="utf-8")
    port = _free_port()
    command = [sys.executable, "-m", "glm4_edge.cli.main", "ui", str(scripted_model), "--kiosk", "--config",
               str(config), "--port", str(port), "--auth", ":".join(AUTH), "--temperature", "0"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + SERVER_START_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"glm4-edge ui exited with {process.returncode}:\n{process.stdout.read()}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except urllib.error.HTTPError:
            break  # it answers: up
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"glm4-edge ui did not serve {url} within {SERVER_START_S} s")
            time.sleep(0.25)
    yield url
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == 0, output  # SIGTERM (systemd stop) is a clean shutdown
    assert f"glm4-edge ui: kiosk for {scripted_model.name}" in output, output
    assert "share" not in output.lower(), output  # no hint at public links on a kiosk's console
    # The operator's view: the model was verified before starting, and each answer's figures are logged.
    assert "glm4-edge ui: verified" in output and "glm4-edge ui: answered · prompt" in output, output


def test_kiosk_cli_locks_the_page_down(kiosk_cli, scripted_model, page):
    page.goto(kiosk_cli, wait_until="load")
    page.wait_for_selector("input[type=password]")  # --auth: a login form comes first
    assert page.locator("#prompt").count() == 0
    page.locator("input[type=text]").first.fill(AUTH[0])
    page.locator("input[type=password]").fill(AUTH[1])
    page.keyboard.press("Enter")
    page.wait_for_selector("#prompt textarea")

    assert page.get_by_text("博物馆问答机").is_visible()
    assert page.get_by_text("我可以回答关于展品的问题").is_visible()
    assert "5 分钟无操作后" in page.inner_text("#kiosk-welcome")
    assert page.locator("#settings").count() == 0
    assert page.locator("#system-prompt").count() == 0 and page.get_by_text("系统提示词").count() == 0
    assert page.locator("#temperature").count() == 0
    body = page.inner_text("body")
    assert "API" not in body and "Settings" not in body and "设置" not in body
    assert page.locator("footer a, footer button").count() == 0
    info = page.request.get(kiosk_cli + "gradio_api/info").json()
    assert not info.get("named_endpoints"), info  # nothing to call from outside the page

    page.get_by_text("青铜器是怎么铸造的？").click()  # an example starts the chat with one tap
    _wait_answer(page, REASONING_ANSWER)
    assert _last_bot_text(page).startswith(REASONING_ANSWER)
    body = page.inner_text("body")
    for internal in (scripted_model.name, "glm4", "fp16", "CPU", "首字延迟", "词元", "tok/s", "TTFT"):
        assert internal not in body, internal  # visitors never see the model, the device or token rates
    assert page.locator(FOOTER).count() == 0 and page.locator("#model-info").count() == 0
    assert "思考过程" in page.inner_text("#chatbot")
    screenshot(page, "ui-kiosk.png")

    page.click("#clear")  # "新对话"
    page.wait_for_function("(sel) => document.querySelectorAll(sel).length === 0", arg=BOT)
    assert page.get_by_text("What is this museum about?").is_visible()


def test_kiosk_forgets_the_conversation_when_idle(scripted_model, page):
    from glm4_edge.ui import KioskConfig

    with _serve(scripted_model, KioskConfig(idle_minutes=0.03)) as (url, _):  # 1.8 s
        _open(page, url)
        _send(page, "hello")
        _wait_answer(page, REASONING_ANSWER)
        started = time.monotonic()
        page.wait_for_function("(sel) => document.querySelectorAll(sel).length === 0", arg=BOT,
                               timeout=15_000)
        assert time.monotonic() - started >= 1.0  # not at once: only after the idle time
        assert page.get_by_text("用三句话介绍一下长城。").is_visible()  # back to the welcome examples


def test_kiosk_forgets_old_turns_when_the_context_is_full(loop_model, page):
    from glm4_edge.ui import KioskConfig

    half = 2100  # two answers of this length do not fit loop_model's 4096-token context
    with _serve(loop_model, KioskConfig(idle_minutes=0), max_new_tokens=half) as (url, _):
        _open(page, url)
        _send(page, "first")
        assert _wait_footers(page, 1) == "length limit"  # a kiosk's footer: no token counts
        page.evaluate(STOP_ON_FIRST_TEXT, [BOT, 1])  # that it starts is enough
        _send(page, "second")  # the desktop page would report an overflow; a kiosk visitor cannot fix it
        footer = _wait_footers(page, 2)
        # Stopped or run to its length limit (it is fast on an idle machine): either way, trimmed.
        assert footer.endswith("oldest turns forgotten to fit the context"), footer


def test_kiosk_caps_input_and_keeps_errors_generic(scripted_model, loop_model, page):
    from glm4_edge.ui import KioskConfig

    with _serve(scripted_model, KioskConfig(idle_minutes=0, max_input_chars=40)) as (url, model):
        _open(page, url)
        _send(page, "x" * 41)
        page.get_by_text("That message is a little long for me. Please keep it under 40 characters.").wait_for()
        assert page.input_value("#prompt textarea") == "x" * 41  # kept, to be shortened
        assert page.locator("#chatbot [data-testid=user]").count() == 0  # the model never saw it
        _send(page, "x" * 40)
        _wait_answer(page, REASONING_ANSWER)
        assert page.locator("#chatbot [data-testid=user]").count() == 1
    # No room for any answer: an error the visitor cannot fix. It must not show token counts or the context.
    context = 4096
    with _serve(loop_model, KioskConfig(idle_minutes=0), max_new_tokens=context) as (url, model):
        assert model.context_length == context
        _open(page, url)
        _send(page, "hello")
        page.get_by_text("Sorry, something went wrong. Please try again, or start a new chat.").wait_for()
        chat = page.inner_text("#chatbot")
        assert "context" not in chat and "token" not in chat and str(context) not in chat, chat


# --- bad input -----------------------------------------------------------------------------------

BAD_TOML = {
    "broken.toml": ("title = 'unterminated", "not valid TOML"),
    "unknown.toml": ('titel = "typo"', "unknown key(s) titel"),
    "language.toml": ('language = "fr"', "language must be one of en, zh"),
    "idle.toml": ("idle_minutes = -1", "idle_minutes must be 0"),
    "examples.toml": ("examples = [1, 2]", "examples must be a list of non-empty strings"),
    "types.toml": ("title = 3", "title must be a string"),
}


@pytest.mark.parametrize("arguments, message", [
    (["--auth", "nocolon"], "--auth must be USER:PASS"),
    (["--auth", ":secret"], "--auth must be USER:PASS"),
    (["--kiosk", "--config", "missing.toml"], "no such file"),
    (["--config", "broken.toml"], "add --kiosk"),
    (["--port", "70000"], "--port must be between"),
    (["--top-k", "-1"], "top_k"),
    (["--stop", "x", "--repetition-penalty", "0"], "--repetition-penalty"),
    *[(["--kiosk", "--config", name], message) for name, (_, message) in BAD_TOML.items()],
])
def test_bad_input_is_one_line_and_exit_2(arguments, message, tmp_path, capsys):
    from glm4_edge.cli.main import main

    for name, (text, _) in BAD_TOML.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    arguments = [str(tmp_path / a) if a.endswith(".toml") else a for a in arguments]
    assert main(["ui", str(tmp_path / "no-model-needed"), *arguments]) == 2
    error = capsys.readouterr().err
    assert error.startswith("glm4-edge ui: error: ") and error.count("\n") == 1, error
    assert message in error, error


def test_documented_kiosk_config_loads():
    from glm4_edge.ui import load_kiosk_config

    config = load_kiosk_config(DOCS / "kiosk.example.toml")
    assert config.language in ("en", "zh") and config.examples and config.idle_minutes > 0
