"""`glm4-edge chat MODEL`: a streaming REPL with /clear, /stats and /exit."""

from __future__ import annotations

import argparse
import atexit
import sys

from rich.console import Console
from rich.markup import escape

from .. import images
from ..documents import read_document
from ..errors import BadParameterError, Glm4EdgeError
from .common import add_model_args, add_sampling_args, load_model, sampling_options
from .documents import ProgressLine, add_file_arg, attach_files, read_files

HELP = ("commands: /file PATH (attach a document to your next message), /image PATH (an image for your next "
        "message), /clear (new conversation), /stats (last answer), /exit; Ctrl-C stops an answer")
TEXT_HELP = HELP.replace(" /image PATH (an image for your next message),", "")  # no /image for text-only models


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("chat", help="chat with a converted model in the terminal")
    add_model_args(parser)
    add_chat_args(parser)
    parser.set_defaults(run=run)


def add_chat_args(parser) -> None:
    """The REPL's own options; `run` shares them."""
    parser.add_argument("--system", help="system prompt")
    parser.add_argument("--trim-history", action="store_true",
                        help="drop the oldest turns instead of failing when the context is full")
    add_file_arg(parser)
    parser.add_argument("--image", metavar="PATH", help="an image for your first message (GLM-4V models)")
    parser.add_argument("--tools", choices=["python"], action="append", default=[],
                        help="python: let the model run Python code in a sandbox (no network, limits; "
                             "see docs/documents.md)")
    add_sampling_args(parser)


def run(args: argparse.Namespace) -> int:
    console = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    options = sampling_options(args)
    documents = read_files(args)
    image = images.open_image(args.image) if getattr(args, "image", None) else None  # fail before loading
    with err.status(f"loading {args.model} on {args.device}"):
        model = load_model(args)
    if image is not None and not model.accepts_images:
        raise BadParameterError(f"{model.name} is a text-only model and cannot see images; convert a GLM-4V "
                                "checkpoint (THUDM/glm-4v-9b) for image chat", "image")
    help_line = HELP if getattr(model, "accepts_images", False) else TEXT_HELP
    err.print(f"[bold]{model.describe()}[/] · loaded in {model.load_s:.1f} s · {help_line}")
    if "python" in args.tools:
        from ..code_tool import open_tool_chat

        chat = open_tool_chat(model, system=args.system, **options)
        err.print(f"[dim]python tool on: code runs sandboxed in {chat.sandbox.workdir}[/]")
        atexit.register(chat.close)  # the session and its working folder go with the REPL
    else:
        chat = model.chat(system=args.system, trim_history=args.trim_history, **options)
    for document in documents:
        err.print(f"[dim]attached {document.name} ({document.chars:,} characters) to your first message[/]")
    while True:
        try:
            text = input(">>> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            err.print("[dim](/exit or Ctrl-D to quit)[/]")
            continue
        command = text.strip()
        if not command:
            continue
        if command in ("/exit", "/quit", "/bye"):
            return 0
        if command == "/clear":
            chat.reset()
            documents, image = [], None
            err.print("[dim]conversation cleared[/]")
            continue
        if command.startswith("/file"):
            path = command[len("/file"):].strip()
            if not path:
                err.print("[dim]usage: /file PATH[/]")
                continue
            try:
                documents.append(read_document(path))
            except Glm4EdgeError as error:
                err.print(f"[red]{error}[/]")
                continue
            err.print(f"[dim]attached {documents[-1].name} ({documents[-1].chars:,} characters) to your next "
                      "message[/]")
            continue
        if command.startswith("/image"):
            if images.holds_image(chat.messages):  # said now, not after the next message
                err.print("[red]GLM-4V takes one image per conversation and this one has its image; /clear starts "
                          "a new conversation[/]")
                continue
            picked = pick_image(model, command[len("/image"):].strip(), err)
            if picked is not None and image is not None:
                err.print("[dim](it replaces the image attached before)[/]")
            image = picked or image
            continue
        if command == "/stats":
            err.print(chat.last_stats.summary() if chat.last_stats else "[dim]no answer yet[/]")
            continue
        if command.startswith("/"):
            err.print(f"[dim]unknown command {command}; {help_line}[/]")
            continue
        answer(chat, text, console, err, documents, args.max_new_tokens, image=image)
        # Sent or refused, the attachments go: a refused file would refuse every later message too.
        image, documents = None, []


def pick_image(model, path: str, err: Console):
    """/image PATH: the decoded image for the next message, or None (the reason printed)."""
    if not path:
        err.print("[dim]usage: /image PATH[/]")
        return None
    if not model.accepts_images:
        err.print(f"[red]{model.name} is a text-only model and cannot see images[/]")
        return None
    try:
        image = images.open_image(path)
    except Glm4EdgeError as error:
        err.print(f"[red]{error}[/]")
        return None
    err.print(f"[dim]attached {path} ({image.size[0]}x{image.size[1]}) to your next message[/]")
    return image


def answer(chat, text: str, console: Console, err: Console, documents=(), max_new_tokens: int = 0,
           image=None) -> bool:
    """Stream one answer; False when the message was refused (its documents are then detached)."""
    if documents:
        turn = [*chat.messages, {"role": "user", "content": text}]
        try:
            attach_files(chat.model, turn, documents, max_new_tokens)
        except Glm4EdgeError as error:
            err.print(f"[red]{error}[/]")
            names = ", ".join(document.name for document in documents)
            err.print(f"[dim]({names} detached: /file a shorter one, or ask without it)[/]")
            return False
        text = turn[-1]["content"]
    try:
        stream = chat.send(text, image=image) if image is not None else chat.send(text)
    except Glm4EdgeError as error:
        err.print(f"[red]{error}[/]")
        return False
    thinking = False
    progress = ProgressLine()
    try:
        for chunk in stream:
            if not hasattr(chunk, "text"):  # a python tool call (code_tool.ToolEvent)
                show_tool_event(chunk, console)
                continue
            progress.update(chunk)
            if chunk.reasoning:
                if not thinking:
                    console.print("[dim]thinking: [/]", end="")
                    thinking = True
                console.print(f"[dim]{chunk.reasoning}[/]", end="")
            if chunk.text:
                if thinking:
                    console.print()
                    thinking = False
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
            if chunk.tool_calls:
                for call in chunk.tool_calls:
                    console.print(f"\n[cyan]tool call[/] {call['name']}({call['arguments']})", end="")
    except KeyboardInterrupt:
        stream.close()
        print()
        err.print("[dim](stopped)[/]")
        return True
    print()
    if chat.last_stats:
        err.print(f"[dim]{chat.last_stats.summary()}[/]")
    return True


def show_tool_event(event, console: Console) -> None:
    if event.result is None:
        console.print(f"\n[cyan]python[/]\n[dim]{escape(event.code)}[/]")
    else:
        console.print(f"[cyan]output[/]\n{escape(event.result.as_tool_text())}")
