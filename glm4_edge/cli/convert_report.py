"""Rich progress and the end-of-conversion summary for `glm4-edge convert`."""

from __future__ import annotations

import contextlib
import time

from rich.console import Console
from rich.table import Table

console = Console(stderr=True, log_path=False)  # stage lines, not the caller's file:line


@contextlib.contextmanager
def progress(quiet: bool = False):
    """Yields `step(message)`: each call closes the previous stage with its time and opens a new one."""
    if quiet:
        yield lambda message: None
        return
    state = {"message": None, "start": 0.0}
    status = console.status("starting")

    def close() -> None:
        if state["message"]:
            console.log(f"[green]done[/] {state['message']} ({time.perf_counter() - state['start']:.1f} s)")

    def step(message: str) -> None:
        close()
        state.update(message=message, start=time.perf_counter())
        status.update(message)

    with status:
        try:
            yield step
        finally:
            pass
    close()


def summary(result) -> None:
    manifest = result.manifest
    compression = manifest.compression
    table = Table(title=f"{manifest.name} ({manifest.family}, {manifest.target_device} preset)")
    table.add_column("precision")
    table.add_column("tensors", justify="right")
    table.add_column("% of weights", justify="right")
    for row in compression.bits_table:
        table.add_row(row["precision"], str(row["tensors"]), f"{row['percent']:.1f}")
    console.print(table)
    before, after = manifest.size_bytes.get("source", 0), manifest.size_bytes.get("output", 0)
    console.print(f"size {before / 1e6:,.1f} MB -> {after / 1e6:,.1f} MB · time {result.seconds:.1f} s · "
                  f"peak memory {result.peak_rss_bytes / 1e9:.2f} GB")
    if compression.weight_error:
        from .info import quality_line

        error = compression.weight_error
        console.print(f"quality: {quality_line(error)}; worst matrix {error['worst_matrix']} "
                      f"({error['worst_relative_mse']:.4g})")
    for note in result.notes:
        console.print(f"[yellow]note[/] {note}")
    on_npu = " --device NPU" if result.manifest.target_device == "npu" else ""
    console.print(f"[bold]{result.output}[/]  try: glm4-edge chat {result.output}{on_npu}")
