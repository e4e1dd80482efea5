"""`glm4-edge devices`: the OpenVINO devices on this machine and what they can do."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from rich.console import Console
from rich.table import Table


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("devices", help="list OpenVINO devices (CPU, GPU, NPU)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..devices import describe_devices

    infos = describe_devices()
    if args.json:
        print(json.dumps([asdict(info) for info in infos], indent=2))
        return 0
    table = Table(title="OpenVINO devices")
    for column in ("device", "full name", "capabilities", "details"):
        table.add_column(column)
    for info in infos:
        details = ", ".join(f"{k}={v}" for k, v in info.properties.items())
        table.add_row(info.name, info.full_name, ", ".join(info.capabilities), details)
    Console().print(table)
    missing = [d for d in ("GPU", "NPU") if not any(i.name.startswith(d) for i in infos)]
    if missing:
        Console(stderr=True).print(f"[dim]not found: {', '.join(missing)} (install the Intel GPU/NPU driver if "
                                   "the hardware is present)[/]")
    return 0
