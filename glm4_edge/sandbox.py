"""A sandboxed, stateful Python session for the `python` tool: one worker process per conversation.

What holds (Linux only; anything else is refused with `SandboxUnavailableError`):

- **No network**: the worker runs in a fresh network namespace (`unshare --net`; only a loopback
  that is down), checked by the worker before it runs anything; with Landlock ABI 4+ TCP connect
  and bind are refused as well.
- **Files**: Landlock lets the worker write only beneath its working folder (a fresh temporary
  folder per conversation) and `/dev/null`, and read only the system's and Python's folders
  (`DEFAULT_READABLE`, the interpreter's prefixes and `sys.path`) and the working folder; the user's
  other files can be neither changed nor read. Each file it writes is limited to `file_bytes`.
- **Processes**: a pid namespace (killing the worker kills everything it started) and
  `RLIMIT_NPROC`; root ignores RLIMIT_NPROC, so a worker started by root drops to `nobody`, and a
  normal user's worker gets its own user namespace, where the count starts at zero.
- **CPU and time**: `RLIMIT_CPU` per cell (the cell gets an error and the session survives) and a
  wall-clock limit per cell, after which the worker and all its processes are killed and the next
  cell starts a fresh session (variables are lost, files stay); a conversation's total CPU is capped.
- **Memory**: `RLIMIT_AS` (an allocation beyond it is a MemoryError in the cell).
- **Output**: the first `output_bytes` of what the cell prints go back; the rest is counted.

Not covered: disk space as a whole inside the working folder (only per file), and reads of world-readable
system files such as /etc. The worker needs util-linux `unshare` and Landlock (Linux 5.13+).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import Glm4EdgeError

WORKER = Path(__file__).with_name("sandbox_worker.py")
DEFAULT_CPU_S = 30
# GLM-4's built-in python tool prompt tells the model a cell times out after 60 s (composite demo).
DEFAULT_WALL_S = 60.0
DEFAULT_MEMORY_BYTES = 2 * 2**30
DEFAULT_OUTPUT_BYTES = 16 * 1024
DEFAULT_FILE_BYTES = 64 * 2**20
DEFAULT_PROCESSES = 64
DEFAULT_OPEN_FILES = 256
DEFAULT_CONVERSATION_CPU_S = 600
STARTUP_S = 30.0
KILL_WAIT_S = 5.0  # how long a kill waits for the pid namespace to empty
NOBODY = 65534
# Where Python and the libraries it loads live on common Linux systems (read-only for the worker). Of
# /etc only what Python's standard library and numpy/matplotlib read: never /etc/shadow and the like.
DEFAULT_READABLE = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/proc", "/sys", "/dev/urandom",
                    "/dev/zero", "/opt/conda", "/etc/localtime", "/etc/timezone", "/etc/zoneinfo", "/etc/ssl",
                    "/etc/ca-certificates", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/hosts",
                    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/mime.types", "/etc/fonts",
                    "/etc/alternatives", "/etc/matplotlibrc", "/etc/os-release")


class SandboxUnavailableError(Glm4EdgeError):
    """This machine cannot isolate the worker (not Linux, no `unshare`, no Landlock, no namespaces)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-cell and per-conversation limits; every one is enforced by the kernel, not by Python code."""

    cpu_s: int = DEFAULT_CPU_S  # CPU seconds per cell (RLIMIT_CPU, raised by this much for each cell)
    wall_s: float = DEFAULT_WALL_S  # wall-clock seconds per cell; then the session is killed and restarted
    memory_bytes: int = DEFAULT_MEMORY_BYTES  # address space (RLIMIT_AS)
    output_bytes: int = DEFAULT_OUTPUT_BYTES  # printed output returned to the model
    file_bytes: int = DEFAULT_FILE_BYTES  # largest file the cell may write (RLIMIT_FSIZE)
    processes: int = DEFAULT_PROCESSES  # processes and threads (RLIMIT_NPROC)
    open_files: int = DEFAULT_OPEN_FILES  # RLIMIT_NOFILE
    conversation_cpu_s: int = DEFAULT_CONVERSATION_CPU_S  # the hard RLIMIT_CPU of one session


@dataclass
class CellResult:
    """What one cell did. `output` is stdout and stderr together, cut at `output_bytes`."""

    output: str = ""
    error: str | None = None
    timed_out: bool = False
    restarted: bool = False  # the session was killed: earlier variables are gone
    truncated_bytes: int = 0

    def as_tool_text(self) -> str:
        """The observation sent back to the model."""
        parts = [self.output.rstrip("\n")] if self.output.strip() else []
        if self.truncated_bytes:
            parts.append(f"[... {self.truncated_bytes:,} more bytes of output not shown]")
        if self.error:
            parts.append(self.error.rstrip("\n"))
        if not parts:
            parts.append("[executed successfully, no output]")
        return "\n".join(parts)


def check_supported() -> None:
    """Raise SandboxUnavailableError saying why this machine cannot run the python tool safely."""
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailableError("the python tool needs Linux (namespaces and Landlock); "
                                      f"this is {sys.platform}")
    if shutil.which("unshare") is None:
        raise SandboxUnavailableError("the python tool needs util-linux `unshare` (apt install util-linux)")


def _children(pid: int) -> list[int]:
    """Process ids of `pid`'s children (Linux /proc; empty when it has none or has exited)."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (field 3 of /proc/PID/stat is its state)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _framed(message: dict) -> bytes:
    body = json.dumps(message, ensure_ascii=False).encode()
    return struct.pack(">I", len(body)) + body


class Sandbox:
    """A Python session in its own working folder. `run(code)` executes one cell; state persists.

    The worker starts on the first `run`; `close()` (or leaving a `with` block) kills it and deletes
    the working folder. Raises SandboxUnavailableError when the isolation cannot be set up.
    """

    def __init__(self, limits: SandboxLimits | None = None, workdir: str | Path | None = None):
        check_supported()
        self.limits = limits or SandboxLimits()
        self._owns_folder = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="glm4-edge-python-")).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(self.workdir, NOBODY, NOBODY)  # the worker runs as nobody (see module docstring)
        self._process: subprocess.Popen | None = None
        self._lost = False  # the previous session was killed: tell the model its state is gone

    # --- lifecycle ------------------------------------------------------------------------------

    def _command(self) -> list[str]:
        namespaces = ["unshare", "--net", "--pid", "--fork", "--kill-child"]
        if os.geteuid() != 0:
            namespaces.insert(1, "--map-current-user")  # a user namespace: needed for the others
        readable = [*DEFAULT_READABLE, sys.prefix, sys.base_prefix, sys.exec_prefix,
                    str(Path(sys.executable).resolve().parent), str(WORKER.parent),
                    *[p for p in sys.path if p and Path(p).is_dir()]]
        config = {"workdir": str(self.workdir), "readable": sorted(set(readable)), "limits": asdict(self.limits)}
        return [*namespaces, sys.executable, "-I", str(WORKER), json.dumps(config)]

    def _environment(self) -> dict[str, str]:
        folder = str(self.workdir)
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": folder, "TMPDIR": folder, "LANG": "C.UTF-8",
                "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg",
                "MPLCONFIGDIR": os.path.join(folder, ".matplotlib"), "OMP_NUM_THREADS": "1",
                "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def _start(self) -> subprocess.Popen:
        process = subprocess.Popen(self._command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, cwd=self.workdir, env=self._environment(),
                                   start_new_session=True)
        self._process = process
        reply = self._receive(STARTUP_S)
        if not reply or not reply.get("ready"):
            stderr = b""
            self._kill()
            if process.stderr is not None:
                stderr = process.stderr.read()[-400:]
            reason = (reply or {}).get("error") or stderr.decode(errors="replace").strip().splitlines()[-1:] or [
                "the worker did not start"]
            reason = reason if isinstance(reason, str) else reason[0]
            raise SandboxUnavailableError(f"cannot start the isolated Python worker: {reason}")
        return process

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        workers = _children(process.pid)
        try:
            os.killpg(process.pid, signal.SIGKILL)  # unshare --kill-child takes the pid namespace with it
        except ProcessLookupError:
            pass
        process.wait()
        # The namespace's init (the worker) kills and waits for everything in its namespace before it
        # turns zombie, but that happens after unshare itself has been reaped: wait for it, so that a
        # caller never sees a process of the killed cell still running.
        deadline = time.monotonic() + KILL_WAIT_S
        while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.01)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    def close(self) -> None:
        """Kill the session and delete the working folder (if this object made it)."""
        self._kill()
        if self._owns_folder:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # --- cells ----------------------------------------------------------------------------------

    def run(self, code: str) -> CellResult:
        """Run one cell; state (variables, imports) persists until a wall-clock timeout restarts the session."""
        restarted, self._lost = self._lost, False
        if not self.alive:
            if self._process is not None:  # it died on its own (the conversation's CPU budget, a kill)
                self._kill()
                restarted = True
            self._start()
        assert self._process is not None and self._process.stdin is not None
        try:
            self._process.stdin.write(_framed({"code": code, "cpu_s": self.limits.cpu_s}))
            self._process.stdin.flush()
        except BrokenPipeError:
            self._kill()
            self._lost = True
            return CellResult(error="the Python session ended unexpectedly and was restarted; run the cell again",
                              restarted=True)
        try:
            reply = self._receive(self.limits.wall_s)
        except BaseException:  # Ctrl-C or a closed generator mid-cell: the worker's state is unknown
            self._kill()
            self._lost = True
            raise
        if reply is None:
            timed_out = self.alive
            self._kill()
            self._lost = True
            if timed_out:
                return CellResult(error=f"Timed out after {self.limits.wall_s:g} s: the Python session was "
                                        "restarted, so variables from earlier cells are gone (files in the "
                                        "working folder are kept)", timed_out=True, restarted=restarted)
            return CellResult(error="the Python session was killed (its CPU budget for this conversation, "
                                    f"{self.limits.conversation_cpu_s} s, is spent, or it crashed); the next "
                                    "cell starts a fresh session", restarted=True)
        return CellResult(output=reply.get("output", ""), error=reply.get("error"),
                          truncated_bytes=int(reply.get("truncated_bytes", 0)), restarted=restarted)

    def _receive(self, timeout: float) -> dict | None:
        """One framed reply, or None on timeout or when the worker is gone."""
        process = self._process
        if process is None or process.stdout is None:
            return None
        fd = process.stdout.fileno()
        deadline = time.monotonic() + timeout
        header = self._read(fd, 4, deadline)
        if header is None:
            return None
        body = self._read(fd, struct.unpack(">I", header)[0], deadline)
        if body is None:
            return None
        try:
            return json.loads(body)
        except ValueError:
            return None

    @staticmethod
    def _read(fd: int, size: int, deadline: float) -> bytes | None:
        data = b""
        while len(data) < size:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, size - len(data))
            if not chunk:
                return None
            data += chunk
        return data
