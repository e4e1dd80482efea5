"""The browser chat: `build_app(model, kiosk_config=None) -> gr.Blocks` and `launch(...)`.

One model serves every browser tab. Each tab keeps its own conversation in `gr.State`; answers go
through Gradio's queue one at a time (one pipeline generates one answer at a time), and a per-tab
cancel event lets Stop end generation in the runtime, not only in the page. Kiosk mode hides every
setting, takes its texts from a small TOML file and forgets the conversation when nobody uses it.
"""

from __future__ import annotations

import os

# Gradio reads this when it is imported: no analytics or version check calls leave the machine.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import json
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from . import documents as docs
from . import images, ui_image
from .code_tool import ToolEvent
from .errors import Glm4EdgeError
from .model import Chunk, Model
from .options import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_P, GenerationOptions, option_names
from .ui_answer import (
    _DONE,
    _Answer,
    _error_text,
    _generate_into,
    _log_answer,
)
from .ui_kiosk import (  # noqa: F401 - re-exported: the CLI and tests read them from here
    CSS,
    DEFAULT_IDLE_MINUTES,
    DEFAULT_MAX_INPUT_CHARS,
    DEFAULT_TITLE,
    KIOSK_CSS,
    MONO_FONTS,
    SYSTEM_FONTS,
    KioskConfig,
    load_kiosk_config,
)
from .ui_state import Conversation, _Controls
from .ui_strings import DEFAULT_EXAMPLES, LANGUAGES, STRINGS  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_REPETITION_PENALTY = 1.0
# The slider's upper end: the model's context, but no more than anyone waits for on a small device.
MAX_NEW_TOKENS_LIMIT = 8192
# Browsers struggle with thousands of DOM updates a second; tokens arriving faster are batched.
STREAM_INTERVAL_S = 0.05
# Each update re-renders the whole answer's Markdown, so long answers update less often: a kiosk's
# small CPU then keeps up instead of falling behind the model (and behind its own Stop button).
RENDER_CHARS_PER_S = 50_000
# Idle checks run in the browser; a few per timeout window is precise enough.
IDLE_CHECKS_PER_TIMEOUT = 6
MAX_IDLE_CHECK_S = 30.0
# Visitors beyond this wait count get "queue full" instead of an ever longer wait.
QUEUE_MAX_SIZE = 64
MODEL_CONCURRENCY_ID = "model"


# --- configuration ------------------------------------------------------------------------------

def parse_auth(value: str | None) -> tuple[str, str] | None:
    """`USER:PASS` -> (user, pass); the password may itself contain colons."""
    if value is None:
        return None
    user, colon, password = value.partition(":")
    if not colon or not user or not password:
        raise Glm4EdgeError("--auth must be USER:PASS with a non-empty user and password, "
                            "e.g. --auth kiosk:s3cret")
    return user, password


# --- the app ------------------------------------------------------------------------------------

def model_summary(model: Model) -> str:
    return f"**{model.name}** · {model.family} · {model.weight_format} · {model.device}"


def build_app(model: Model, kiosk_config: KioskConfig | None = None, *, system_prompt: str = "",
              temperature: float = DEFAULT_TEMPERATURE, top_p: float = DEFAULT_TOP_P,
              max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
              repetition_penalty: float = DEFAULT_REPETITION_PENALTY, seed: int | None = None,
              top_k: int = 0, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
              stop: Sequence[str] = (), language: str = "en", python_tool: bool = False) -> gr.Blocks:
    """The chat page for `model`; `kiosk_config` (even an empty `KioskConfig()`) means kiosk mode.

    The generation options mean what they mean to `Model.stream` (a bad one raises BadParameterError
    here, before anything is served); the desktop page's sliders start at them and override them.
    `python_tool` lets the model run code in a per-tab sandbox (`glm4_edge.sandbox`); never in kiosk mode.
    A model that takes images (GLM-4V) gets an image upload (`ui_image`; a kiosk's `allow_images`): the image
    goes with the message it is sent with, one per conversation.
    """
    kiosk = kiosk_config is not None
    if kiosk and python_tool:
        raise Glm4EdgeError("the python tool is not available in kiosk mode")
    base_options = GenerationOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                     top_k=top_k, repetition_penalty=repetition_penalty,
                                     presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                                     seed=seed, stop=tuple(stop))
    config = kiosk_config or KioskConfig(language=language, system_prompt=system_prompt)
    s = STRINGS[config.language]
    fixed_system = (config.system_prompt or system_prompt) if kiosk else ""
    examples = list(config.examples or DEFAULT_EXAMPLES)
    idle_s = config.idle_minutes * 60 if kiosk else 0.0
    max_tokens_limit = max(1, min(MAX_NEW_TOKENS_LIMIT, model.context_length or MAX_NEW_TOKENS_LIMIT))
    controls = _Controls()

    with gr.Blocks(title=config.title, analytics_enabled=False, fill_height=kiosk, fill_width=kiosk) as app:
        conversation = gr.State(Conversation())
        if kiosk:
            gr.Markdown(f"# {config.title}", elem_id="kiosk-title")
            welcome = config.welcome or s["welcome"]
            if idle_s:
                welcome += "  \n" + s["idle_note"].format(minutes=config.idle_minutes)
            gr.Markdown(welcome, elem_id="kiosk-welcome")
        else:
            gr.Markdown(f"# {config.title}")
            gr.Markdown(model_summary(model), elem_id="model-info")  # the kiosk never names the model

        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(
                    elem_id="chatbot", show_label=False, height=None if kiosk else 560, min_height=420,
                    scale=1, examples=[{"text": example} for example in examples],
                    placeholder=None if kiosk else s["welcome"], buttons=["copy"] if not kiosk else [],
                    feedback_options=None, layout="bubble", autoscroll=True)
                with gr.Row(equal_height=True):
                    prompt = gr.Textbox(elem_id="prompt", show_label=False, placeholder=s["placeholder"],
                                        lines=1, max_lines=6, scale=6, autofocus=True, submit_btn=False)
                    send = gr.Button(s["send"], elem_id="send", variant="primary", scale=1, min_width=90)
                    stop = gr.Button(s["stop"], elem_id="stop", variant="stop", scale=1, min_width=90)
                upload = image = None
                show_upload, show_image = not kiosk or config.allow_upload, ui_image.offers_images(model, kiosk_config)
                if show_upload or show_image:
                    with gr.Row(equal_height=True):
                        if show_image:
                            # image_mode=None: Gradio passes the upload on as it came (see ui_image).
                            image = gr.Image(label=s["image"], type="filepath", image_mode=None,
                                             sources=["upload", "clipboard"], elem_id="image", buttons=["fullscreen"],
                                             height=220 if kiosk else 160, scale=1)
                        if show_upload:
                            upload = gr.File(label=s["upload"], file_count="multiple", type="filepath",
                                             elem_id="upload", height=120, scale=1)
                with gr.Row():
                    size = "lg" if kiosk else "sm"
                    regenerate = gr.Button(s["regenerate"], elem_id="regenerate", size=size)
                    clear = gr.Button(s["new_chat"] if kiosk else s["clear"], elem_id="clear", size=size)
            settings: list[gr.components.Component] = []
            if not kiosk:
                with gr.Column(scale=1, min_width=280, elem_id="settings"):
                    gr.Markdown(f"### {s['settings']}")
                    system_box = gr.Textbox(system_prompt, label=s["system_prompt"], elem_id="system-prompt",
                                            placeholder=s["system_placeholder"], lines=3, max_lines=10)
                    temperature_slider = gr.Slider(0.0, 2.0, value=temperature, step=0.05,
                                                   label=s["temperature"], elem_id="temperature")
                    top_p_slider = gr.Slider(min(0.05, top_p), 1.0, value=top_p, step=0.05, label=s["top_p"],
                                             elem_id="top-p")
                    max_tokens_slider = gr.Slider(1, max_tokens_limit, step=1, label=s["max_new_tokens"],
                                                  value=min(max_new_tokens, max_tokens_limit),
                                                  elem_id="max-new-tokens")
                    repetition_slider = gr.Slider(min(1.0, repetition_penalty), max(2.0, repetition_penalty),
                                                  value=repetition_penalty, step=0.05,
                                                  label=s["repetition_penalty"], elem_id="repetition-penalty")
                    with gr.Accordion(s["tools"], open=False):
                        tools_box = gr.Textbox(show_label=False, lines=6, max_lines=20, elem_id="tools",
                                               placeholder='[{"type": "function", "function": {"name": '
                                                           '"get_weather", "parameters": {...}}}]')
                    settings = [system_box, temperature_slider, top_p_slider, max_tokens_slider,
                                repetition_slider, tools_box]

        # --- handlers -----------------------------------------------------------------------------

        clear_label = s["new_chat"] if kiosk else s["clear"]

        def note(conv: Conversation, content: str) -> None:
            """A message from the page itself in the chat (never sent to the model)."""
            message = {"role": "assistant", "content": content}
            if conv.display and conv.display[-1] == message:
                conv.display.pop()  # one note, not a stack of them
            conv.display.append(message)
            conv.active = time.monotonic()

        def add_user(text: str, conv: Conversation, request: gr.Request, files: list[str] | None = None,
                     picture: str | None = None):
            control = controls.get(request)
            text = (text or "").strip()
            if (not text and not files) or control.busy:
                # While this tab's answer is queued or streaming, the text stays in the box for later;
                # `conv` is left alone, as that answer's step still has to find its pending turn.
                if picture is not None and not control.busy:  # GLM-4V needs words with its image
                    note(conv, s["image_question"])
                    return gr.skip(), list(conv.display), conv
                return gr.skip(), gr.skip(), gr.skip()
            if kiosk and len(text) > config.max_input_chars:
                # Said in the chat, and the text stays in the box to be shortened; the model never sees it.
                note(conv, s["too_long"].format(limit=config.max_input_chars))
                return gr.skip(), list(conv.display), conv
            if picture is not None:  # refused before anything is sent; the question and the image stay
                problem = (s["one_image"].format(clear=clear_label) if images.holds_image(conv.turns)
                           else ui_image.image_problem(picture))
                if problem:
                    note(conv, f"⚠️ {problem}")
                    return gr.skip(), list(conv.display), conv
            read: list[docs.Document] = []
            try:
                read = [docs.read_document(path, name=Path(path).name) for path in files or []]
            except docs.DocumentError as error:  # the file's problem in the chat; the question stays in the box
                conv.display.append({"role": "assistant", "content": f"⚠️ **{s['error']}:** {error}"})
                return gr.skip(), list(conv.display), conv
            if conv.turns and conv.turns[-1]["role"] == "user":
                conv.turns.pop()  # an earlier question whose answer failed: the user moved on
            shown = "".join(f"📄 {d.name} · {d.chars:,} characters  \n" for d in read)
            shown += "\n" + text if read else text
            conv.display.append({"role": "user",
                                 "content": ui_image.shown_with_image(picture, shown) if picture else shown})
            turn: dict[str, Any] = {"role": "user", "content": docs.document_prompt(read, text)}
            if read:
                turn["_documents"] = read  # for the context check once max_new_tokens is known
            if picture:
                turn["image"] = picture  # the runtime's own message key (glm4_edge.vision.split_image)
            conv.turns.append(turn)
            conv.pending, conv.active, conv.epoch = True, time.monotonic(), control.epoch
            control.busy = True
            control.cancel = threading.Event()  # fresh per answer, so an old Stop never hits the next one
            return "", list(conv.display), conv

        def add_example(event: gr.SelectData, conv: Conversation, request: gr.Request):
            value = event.value if isinstance(event.value, dict) else {"text": str(event.value)}
            return add_user(value.get("text", ""), conv, request)

        def retry(conv: Conversation, request: gr.Request):
            control = controls.get(request)
            users = [i for i, m in enumerate(conv.display) if m["role"] == "user"]
            turn_users = [i for i, m in enumerate(conv.turns) if m["role"] == "user"]
            if control.busy or not users or not turn_users:
                return gr.skip(), gr.skip()
            del conv.display[users[-1] + 1:]
            del conv.turns[turn_users[-1] + 1:]
            conv.pending, conv.active, conv.epoch = True, time.monotonic(), control.epoch
            control.busy = True
            control.cancel = threading.Event()
            return list(conv.display), conv

        def answer(conv: Conversation, values: tuple[Any, ...],
                   request: gr.Request) -> Iterator[tuple[Any, Conversation]]:
            control = controls.get(request)
            epoch, cancel = conv.epoch, control.cancel
            if not conv.pending or epoch != control.epoch:  # nothing asked, or Clear came first
                yield gr.skip(), gr.skip()
                return
            conv.pending = False
            result = _Answer(s, show_stats=not kiosk)
            finished = False
            try:
                try:
                    options, system = _options(values)
                    messages = ([{"role": "system", "content": system}] if system else []) + conv.turns
                    attached = conv.turns[-1].get("_documents") if conv.turns else None
                    if attached:
                        docs.check_fits(model, messages, attached, options["max_new_tokens"])
                    if python_tool and control.sandbox is None:
                        from .sandbox import Sandbox

                        control.sandbox = Sandbox()
                except Glm4EdgeError as error:  # a bad setting on the page: say so in the chat
                    result.error = str(error)
                    conv.display.extend(result.messages())
                    finished = True
                    yield list(conv.display), conv
                    return
                out: queue.SimpleQueue = queue.SimpleQueue()
                sandbox = control.sandbox if python_tool else None
                worker = threading.Thread(target=_generate_into, name="glm4-edge-ui-answer", daemon=True,
                                          args=(model, messages, options, cancel, out, kiosk, sandbox))
                worker.start()
                base = list(conv.display)
                last_yield, dirty, interval = 0.0, False, STREAM_INTERVAL_S
                while True:
                    wait = max(0.0, last_yield + interval - time.monotonic()) if dirty else None
                    try:
                        item = out.get(timeout=wait)
                    except queue.Empty:
                        item = None
                    if item is _DONE:
                        break
                    if isinstance(item, Chunk):
                        result.add(item)
                        dirty = True
                    elif isinstance(item, ToolEvent):
                        result.add_tool_event(item)
                        dirty = True
                    elif isinstance(item, Exception):
                        result.error = _error_text(item, s, kiosk)
                    elif item == "trimmed":
                        result.trimmed = True
                    if control.epoch != epoch:
                        return  # Clear was pressed: this answer belongs to a chat that is gone
                    if dirty and time.monotonic() - last_yield >= interval:
                        yield base + result.messages(), conv
                        last_yield, dirty = time.monotonic(), False
                        interval = max(STREAM_INTERVAL_S, result.size / RENDER_CHARS_PER_S)
                finished = True
            finally:
                if not finished:
                    cancel.set()  # Clear, or the page went away mid-answer: free the model for the next one
                if control.epoch == epoch:  # after Clear, `busy` may already belong to a newer answer
                    control.busy = False
            if control.epoch != epoch:
                return
            if result.trimmed:
                # Keep the model's view and ours in step: the runtime saw the trimmed history.
                conv.turns = messages[1:] if system else messages
            if python_tool and not result.error:
                conv.turns = messages[1:] if system else messages  # run_turn added the calls, results, answer
            elif not result.error:
                conv.turns.append(result.as_turn())
            conv.display = base + result.messages()
            conv.active = time.monotonic()
            if kiosk:
                _log_answer(result)
            yield list(conv.display), conv

        def _options(values: tuple[Any, ...]) -> tuple[dict[str, Any], str]:
            # Every option from the command line, then what the page's settings say.
            options: dict[str, Any] = {name: getattr(base_options, name) for name in option_names()}
            if kiosk:
                system, tools = fixed_system, None
            else:
                system, temp, top, max_tokens, repetition, tools_text = values
                options.update({"temperature": float(temp), "top_p": float(top), "max_new_tokens": int(max_tokens),
                                "repetition_penalty": float(repetition)})
                tools = _parse_tools(tools_text, s)
            if tools:
                options["tools"] = tools
            return options, (system or "").strip()

        # Gradio passes gr.Request only to a parameter it can see, so each mode gets its own signature.
        def answer_kiosk(conv: Conversation, request: gr.Request) -> Iterator[tuple[Any, Conversation]]:
            yield from answer(conv, (), request)

        def answer_desktop(conv: Conversation, system: str, temp: float, top: float, max_tokens: float,
                           repetition: float, tools_text: str,
                           request: gr.Request) -> Iterator[tuple[Any, Conversation]]:
            yield from answer(conv, (system, temp, top, max_tokens, repetition, tools_text), request)

        def release(conv: Conversation, request: gr.Request) -> None:
            # The answer step frees the tab itself; this covers a step that never ran (queue full).
            control = controls.get(request)
            if conv.pending and conv.epoch == control.epoch:
                conv.pending, control.busy = False, False

        def stop_answer(request: gr.Request) -> None:
            controls.get(request).cancel.set()

        def reset(request: gr.Request):
            control = controls.get(request)
            control.cancel.set()
            control.close_sandbox()  # a new conversation gets a fresh python session and folder
            control.epoch += 1
            control.busy = False
            fresh = Conversation(active=time.monotonic(), epoch=control.epoch)
            return [], fresh, ""

        def idle_check(conv: Conversation, draft: str, request: gr.Request):
            control = controls.get(request)
            waiting = [None] * len(boxes)  # the next visitor does not get the last one's image or files
            if (draft or "") != conv.draft:  # typing counts as use; an unsent draft is emptied like the rest
                conv.draft, conv.active = draft or "", time.monotonic()
                return gr.skip(), conv, *(gr.skip(),) * (1 + len(waiting))
            if control.busy or not (conv.display or conv.uploaded or conv.draft) or \
                    time.monotonic() - conv.active < idle_s:
                return (gr.skip(),) * (3 + len(waiting))
            return (*reset(request), *waiting)

        def check_image(value: Any, conv: Conversation, request: gr.Request):
            """On upload, said at once: a file that is no usable image (it leaves the box), or that this conversation
            already has its image (the new one stays in the box, to be sent after Clear)."""
            path = ui_image.uploaded_path(value)
            if path is None:
                return gr.skip(), gr.skip(), gr.skip()
            problem = ui_image.image_problem(path)
            if controls.get(request).busy:  # the streaming answer owns `conv` until it ends: a toast instead
                if problem:
                    gr.Warning(problem)
                return None if problem else gr.skip(), gr.skip(), gr.skip()
            conv.uploaded, conv.active = True, time.monotonic()
            if problem is None and not images.holds_image(conv.turns):
                return gr.skip(), gr.skip(), conv
            kept = None if problem else gr.skip()
            note(conv, f"⚠️ {problem or s['one_image'].format(clear=clear_label)}")
            return kept, list(conv.display), conv

        def mark_upload(value: Any, conv: Conversation, request: gr.Request):
            """Files put in the document box count as use: the idle reset empties the box, sent or not."""
            if not value or controls.get(request).busy:  # a streaming answer owns `conv`; its end counts
                return gr.skip()
            conv.uploaded, conv.active = True, time.monotonic()
            return conv

        def forget_tab(request: gr.Request) -> None:
            controls.drop(request)

        # --- wiring -------------------------------------------------------------------------------

        # Every endpoint is private: the chat turn is split over several steps that only make sense
        # to this page. Programs should use `glm4-edge serve` (OpenAI-compatible) instead.
        instant = {"queue": False, "show_progress": "hidden", "api_visibility": "private"}
        answer_fn = answer_kiosk if kiosk else answer_desktop

        def then_answer(first_step: Any) -> None:
            first_step.then(answer_fn, [conversation, *settings], [chatbot, conversation],
                            concurrency_limit=1, concurrency_id=MODEL_CONCURRENCY_ID, show_progress="minimal",
                            api_visibility="private").then(release, [conversation], None, **instant)

        boxes = [box for box in (upload, image) if box is not None]
        absent = gr.State(None)  # stands in for an upload box this page does not have

        def add_user_with(text: str, conv: Conversation, files: list[str] | None, picture: str | None,
                          request: gr.Request):
            outcome = add_user(text, conv, request, files, picture)
            sent = outcome[0] == ""  # the message went in: its files go with it
            return (outcome[0], *[None if sent else gr.skip()] * len(boxes), outcome[1], outcome[2])

        for trigger in (prompt.submit, send.click):
            then_answer(trigger(add_user_with, [prompt, conversation, absent if upload is None else upload,
                                                absent if image is None else image],
                                [prompt, *boxes, chatbot, conversation], **instant))
        if upload is not None:
            upload.upload(mark_upload, [upload, conversation], [conversation], preprocess=False, **instant)
        if image is not None:
            # Queued (so that gr.Warning reaches the page) but never behind an answer: no concurrency limit.
            image.upload(check_image, [image, conversation], [image, chatbot, conversation], preprocess=False,
                         concurrency_limit=None, show_progress="hidden", api_visibility="private")
        then_answer(chatbot.example_select(add_example, [conversation], [prompt, chatbot, conversation],
                                           **instant))
        then_answer(regenerate.click(retry, [conversation], [chatbot, conversation], **instant))
        # Stop runs outside the queue: queued behind the answer it is meant to stop, it would be useless.
        stop.click(stop_answer, None, None, **instant)
        # Clear keeps an image waiting in the box: it is how a second image starts its own conversation.
        clear.click(reset, None, [chatbot, conversation, prompt], **instant)
        chatbot.clear(reset, None, [chatbot, conversation, prompt], **instant)  # the Chatbot's own bin icon
        if idle_s:
            timer = gr.Timer(min(MAX_IDLE_CHECK_S, idle_s / IDLE_CHECKS_PER_TIMEOUT))
            timer.tick(idle_check, [conversation, prompt], [chatbot, conversation, prompt, *boxes], **instant)
        app.unload(forget_tab)

    app.glm4_edge_kiosk = kiosk  # read by `launch` for the theme, CSS and footer
    return app


def _parse_tools(text: str | None, strings: dict[str, str]) -> list[dict] | None:
    if not text or not text.strip():
        return None
    try:
        tools = json.loads(text)
    except ValueError as error:
        raise Glm4EdgeError(f"{strings['bad_tools']} ({error})") from None
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
        raise Glm4EdgeError(strings["bad_tools"])
    return tools


def theme(kiosk: bool) -> gr.themes.Base:
    size = "lg" if kiosk else "md"
    return gr.themes.Default(font=list(SYSTEM_FONTS), font_mono=list(MONO_FONTS), text_size=size,
                             spacing_size=size, radius_size=size)


def launch(app: gr.Blocks, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
           auth: tuple[str, str] | None = None, block: bool = True, quiet: bool = False) -> gr.Blocks:
    """Serve `app` on host:port; never through a public share link. `block=False` returns at once."""
    kiosk = bool(getattr(app, "glm4_edge_kiosk", False))
    app.queue(default_concurrency_limit=1, max_size=QUEUE_MAX_SIZE)
    try:
        app.launch(server_name=host, server_port=port, share=False, auth=auth, inbrowser=False,
                   max_file_size=docs.DEFAULT_MAX_FILE_BYTES,
                   prevent_thread_lock=not block, quiet=quiet, show_error=False, ssr_mode=False,
                   footer_links=[] if kiosk else ["gradio", "settings"], mcp_server=False, pwa=False,
                   theme=theme(kiosk), css=KIOSK_CSS if kiosk else CSS)
    except OSError as error:
        raise Glm4EdgeError(f"cannot serve on {host}:{port} ({error}); "
                            "pick another --port or --host") from None
    return app
