"""`glm4-edge run SOURCE`: convert a checkpoint into the store once, then chat (like `ollama run`).

SOURCE is a checkpoint folder or hub id (converted into the store under `<checkpoint>-<format>[-<device>]`
with the default preset for `--device`, unless the store has it already), a store name, or a
converted model folder. The conversion holds the store's lock for that name, so a second `run`
of the same checkpoint waits for the first and then starts at once, and it is atomic: an
interrupted one leaves no entry behind.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .. import store
from ..devices import base_device
from ..errors import Glm4EdgeError
from ..manifest import read_manifest
from .chat import add_chat_args
from .chat import run as chat
from .common import add_runtime_args

# A hub id as `convert` accepts it (owner/name); anything else that is neither a folder nor a store name is a typo.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
PRESETS = {"CPU": "cpu", "GPU": "gpu", "NPU": "npu"}  # AUTO and others convert with the cpu preset


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="convert a checkpoint into the model store once, then chat (like `ollama run`)",
        description="Chat with SOURCE: a checkpoint folder or hub id (converted into the store the first time, "
                    "with the default preset for --device), a store name, or a converted model folder.")
    parser.add_argument("source", help="checkpoint folder or hub id, store name, or converted model folder")
    add_runtime_args(parser)
    add_chat_args(parser)
    parser.add_argument("--weight-format", choices=("int4", "int8", "fp16"), default="int4",
                        help="when converting (default int4)")
    parser.add_argument("--name", help="store name for the converted model (default <checkpoint>-<format>"
                                       "[-<device>], e.g. glm-4-9b-0414-int4)")
    parser.add_argument("--force", action="store_true",
                        help="convert again even if the store has the model (replaced only after success)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    args.model = prepare(args)
    return chat(args)


def prepare(args: argparse.Namespace) -> Path:
    """The converted model folder to chat with, converting SOURCE into the store first if needed."""
    source = args.source
    path = Path(source).expanduser()
    if args.name is not None:
        store.check_name(args.name)
    if path.is_dir() and store.is_model_folder(path):
        return path  # a converted folder, or a store entry given by its path
    if not path.exists() and store.is_name(source) and store.is_model_folder(store.home() / source):
        if args.force:
            manifest = read_manifest(store.home() / source)
            origin = manifest.source.get("id") if manifest else None
            raise Glm4EdgeError(f"--force converts a checkpoint again; give the checkpoint rather than the store "
                                f"name: glm4-edge run {origin or 'CHECKPOINT'} --force")
        return store.home() / source
    if path.exists():
        if not path.is_dir():
            raise Glm4EdgeError(f"{path} is a file; give a checkpoint folder, a converted model folder or a "
                                "store name")
        if not (path / "config.json").is_file():
            raise Glm4EdgeError(f"{path} is neither a converted model (no openvino_model.xml) nor a checkpoint "
                                "(no config.json)")
    elif not HUB_ID.fullmatch(source):
        found = store.resolve(source)  # raises: no such folder, store name or hub id, with a suggestion
        raise Glm4EdgeError(f"{found} is not a converted model (no openvino_model.xml); `glm4-edge rm {source}` "
                            "and convert it again")
    preset = PRESETS.get(base_device(args.device), "cpu")
    name = args.name or store.entry_name(source, args.weight_format, preset)
    destination = store.entry_path(name)
    with store.lock(name):
        if destination.exists() and not args.force:
            _check_same_source(destination, source, path)
            return destination
        store.clean_stale()
        _convert(source, destination, args.weight_format, preset, args.force)
    return destination


def _check_same_source(entry: Path, source: str, path: Path) -> None:
    """Refuse to chat with a store entry of the same name made from another checkpoint."""
    manifest = read_manifest(entry)
    if manifest is None:
        return
    recorded = str(manifest.source.get("id", ""))
    if path.exists():
        from ..convert.export import content_hash  # cheap to import: torch loads only when converting

        same_place = recorded == str(path.resolve())
        same_content = manifest.source.get("content_hash") == content_hash(path)
        if same_place and not same_content:
            print(f"glm4-edge run: note: {source} changed since {entry.name} was converted ({manifest.created}); "
                  "`--force` converts it again", file=sys.stderr)
        if same_place or same_content:
            return
    elif recorded.lower() == source.lower():
        return
    raise Glm4EdgeError(f"the store's {entry.name} was converted from {recorded or 'another checkpoint'}, not "
                        f"{source}; pass --name to keep both, or --force to replace it")


def _convert(source: str, destination: Path, weight_format: str, preset: str, force: bool) -> None:
    try:
        from ..convert import export
    except ImportError as error:
        raise Glm4EdgeError(f"converting {source} needs the [convert] extra ({error.name} is missing): "
                            "pip install 'glm4-edge[convert]', or convert on another machine and "
                            "`glm4-edge unpack` the result") from None
    from . import convert_report

    options = export.ConvertOptions(source=source, output=destination, weight_format=weight_format,
                                    device=preset, force=force)
    with convert_report.progress() as step:
        result = export.convert(options, step)
    # Said after success only: a source that cannot be read stays a one-line error.
    print(f"glm4-edge run: converted {source} into the store as {destination.name} ({weight_format}, {preset} "
          f"preset) in {result.seconds:.0f} s; later runs start at once", file=sys.stderr, flush=True)
