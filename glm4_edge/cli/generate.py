"""`glm4-edge generate MODEL -p TEXT`: one answer for scripts, or a JSONL batch."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from .. import images
from ..errors import BadParameterError, Glm4EdgeError
from ..glm_format import tool_schemas
from .common import add_model_args, add_sampling_args, load_model, sampling_options
from .documents import ProgressLine, add_file_arg, attach_files, read_files

DEFAULT_BATCH_SIZE = 8


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="answer one prompt (or a JSONL batch) and exit")
    add_model_args(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-p", "--prompt", help="the user message; '-' reads standard input")
    source.add_argument("--batch", type=Path, help="JSONL input: one {\"prompt\"} or {\"messages\"} per line")
    parser.add_argument("-o", "--output", type=Path, help="JSONL output for --batch")
    parser.add_argument("--system", help="system prompt")
    parser.add_argument("--tools", type=Path, metavar="TOOLS.json",
                        help="JSON list of function schemas the model may call (OpenAI format)")
    add_file_arg(parser)
    parser.add_argument("--image", type=Path, metavar="PATH", help="an image the prompt asks about (GLM-4V models)")
    parser.add_argument("--json", action="store_true", help="print the reply and stats as JSON")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="prompts per batched call")
    add_sampling_args(parser)
    parser.set_defaults(run=run)


def read_tools(path: Path | None) -> list[dict] | None:
    """--tools FILE: a JSON list (or one object) of function schemas, checked before the model loads."""
    if path is None:
        return None
    try:
        tools = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise BadParameterError(f"--tools {path}: cannot read it ({error.strerror})", "tools") from None
    except ValueError as error:
        raise BadParameterError(f"--tools {path}: not valid JSON ({error})", "tools") from None
    tools = [tools] if isinstance(tools, dict) else tools
    if not isinstance(tools, list):
        raise BadParameterError(f"--tools {path}: must be a JSON list of function schemas", "tools")
    try:
        tool_schemas(tools)
    except BadParameterError as error:
        raise BadParameterError(f"--tools {path}: {error}", "tools") from None
    return tools


def run(args: argparse.Namespace) -> int:
    if args.file and args.batch is not None:
        raise BadParameterError("--file goes with -p; in a --batch, put the text in the messages", "file")
    if args.image is not None and args.batch is not None:
        raise BadParameterError("--image goes with -p; a --batch is text only", "image")
    if args.batch is not None:
        return run_batch(args)
    if args.output is not None:
        raise BadParameterError("-o/--output goes with --batch; for one prompt, redirect standard output", "output")
    # `echo ... | generate -p -` ends the text with a newline the user did not mean as part of the prompt
    # (it changes the tokens the model sees, and a tiny model's answer with them).
    prompt = sys.stdin.read().rstrip("\r\n") if args.prompt == "-" else args.prompt
    if not prompt.strip():
        raise BadParameterError("the prompt is empty", "prompt")
    options = {**sampling_options(args), "tools": read_tools(args.tools)}
    documents = read_files(args)
    image = images.open_image(args.image) if args.image is not None else None  # a bad image fails before loading
    model = load_model(args)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": prompt}]
    attach_files(model, messages, documents, args.max_new_tokens)
    if image is not None:
        messages[-1]["image"] = image
    if args.json:
        reply = model.generate(messages, **options)
        print(json.dumps({"text": reply.text, "reasoning": reply.reasoning, "tool_calls": reply.tool_calls,
                          "finish_reason": reply.finish_reason, "stats": reply.stats.as_dict()},
                         ensure_ascii=False))
        return 0
    progress = ProgressLine()
    for chunk in model.stream(messages, **options):
        progress.update(chunk)
        sys.stdout.write(chunk.text)
        for call in chunk.tool_calls or []:
            sys.stdout.write(f"{call['name']}({call['arguments']})")
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _read_batch(path: Path) -> list[tuple[int, Any, str | None]]:
    """(line number, conversation or None, error) for every non-blank input line."""
    if not path.is_file():
        raise Glm4EdgeError(f"--batch {path}: no such file")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            rows.append((number, None, f"invalid JSON: {error.msg}"))
            continue
        if isinstance(record, dict) and isinstance(record.get("prompt"), str) and record["prompt"].strip():
            rows.append((number, record["prompt"], None))
        elif isinstance(record, dict) and isinstance(record.get("messages"), list) and record["messages"]:
            rows.append((number, record["messages"], None))
        else:
            rows.append((number, None, "needs a non-empty 'prompt' string or 'messages' list"))
    return rows


def _read_done(path: Path) -> dict[int, dict]:
    done: dict[int, dict] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by an interrupted run: redo it
        if isinstance(record, dict) and isinstance(record.get("line"), int) and "error" not in record:
            done[record["line"]] = record
    return done


def run_batch(args: argparse.Namespace) -> int:
    if args.output is None:
        raise BadParameterError("--batch needs -o OUT.jsonl", "output")
    if args.batch_size < 1:
        raise BadParameterError("--batch-size must be at least 1", "batch_size")
    options = {**sampling_options(args), "tools": read_tools(args.tools)}
    rows = _read_batch(args.batch)
    done = _read_done(args.output)
    todo = [(n, conv) for n, conv, error in rows if error is None and n not in done]
    results: dict[int, dict] = dict(done)
    for number, _, error in rows:
        if error is not None:
            print(f"glm4-edge generate: {args.batch}:{number}: skipped, {error}", file=sys.stderr)
            results[number] = {"line": number, "error": error}
    if todo:
        model = load_model(args)
        with args.output.open("a", encoding="utf-8") as progress:  # partial results survive a crash
            for start in range(0, len(todo), args.batch_size):
                group = todo[start:start + args.batch_size]
                system = [{"role": "system", "content": args.system}] if args.system else []
                conversations = [system + ([{"role": "user", "content": c}] if isinstance(c, str) else c)
                                 for _, c in group]
                try:
                    replies = model.generate_batch(conversations, **options)
                except Glm4EdgeError:
                    # One line the group cannot take (too long for the context, a bad message) fails the whole
                    # call: answer the group line by line so that only the bad line is skipped.
                    replies = [_one(model, conversation, options) for conversation in conversations]
                for (number, _), reply in zip(group, replies, strict=True):
                    if isinstance(reply, Exception):
                        record = {"line": number, "error": str(reply)}
                        print(f"glm4-edge generate: {args.batch}:{number}: {reply}", file=sys.stderr)
                    else:
                        record = {"line": number, "text": reply.text, "reasoning": reply.reasoning,
                                  "tool_calls": reply.tool_calls, "finish_reason": reply.finish_reason,
                                  "usage": {"prompt_tokens": reply.stats.prompt_tokens,
                                            "completion_tokens": reply.stats.generated_tokens}}
                    results[number] = record
                    progress.write(json.dumps(record, ensure_ascii=False) + "\n")
                progress.flush()
    temp = args.output.with_name(f".{args.output.name}.tmp")
    with temp.open("w", encoding="utf-8") as handle:
        for number in sorted(results):
            handle.write(json.dumps(results[number], ensure_ascii=False) + "\n")
    os.replace(temp, args.output)
    failed = sum(1 for r in results.values() if "error" in r)
    answered = sum(1 for number, _ in todo if "error" not in results[number])
    print(f"glm4-edge generate: {answered} answered, {len(done)} already done, {failed} skipped -> "
          f"{args.output}", file=sys.stderr)
    # A batch where no line could be answered failed, whatever was written: scripts must see it.
    return 1 if failed and failed == len(results) else 0


def _one(model, conversation, options: dict):
    """One conversation's reply, or the Glm4EdgeError that refused it."""
    try:
        return model.generate_batch([conversation], **options)[0]
    except Glm4EdgeError as error:
        return error
