"""`glm4-edge chat MODEL`: a streaming REPL with /clear, /stats and /exit."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from ..errors import Glm4EdgeError
from .common import add_model_args, add_sampling_args, load_model, sampling_options

HELP = "commands: /clear (new conversation), /stats (last answer), /exit; Ctrl-C stops an answer"


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
    add_sampling_args(parser)


def run(args: argparse.Namespace) -> int:
    console = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    options = sampling_options(args)
    with err.status(f"loading {args.model} on {args.device}"):
        model = load_model(args)
    err.print(f"[bold]{model.describe()}[/] · loaded in {model.load_s:.1f} s · {HELP}")
    chat = model.chat(system=args.system, trim_history=args.trim_history, **options)
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
            err.print("[dim]conversation cleared[/]")
            continue
        if command == "/stats":
            err.print(chat.last_stats.summary() if chat.last_stats else "[dim]no answer yet[/]")
            continue
        if command.startswith("/"):
            err.print(f"[dim]unknown command {command}; {HELP}[/]")
            continue
        answer(chat, text, console, err)


def answer(chat, text: str, console: Console, err: Console) -> None:
    try:
        stream = chat.send(text)
    except Glm4EdgeError as error:
        err.print(f"[red]{error}[/]")
        return
    thinking = False
    try:
        for chunk in stream:
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
        return
    print()
    if chat.last_stats:
        err.print(f"[dim]{chat.last_stats.summary()}[/]")
