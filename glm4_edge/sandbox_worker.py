"""The sandboxed Python worker: run by path (never imported by glm4-edge) inside `unshare`'s namespaces.

It locks itself down before it reads any code (resource limits, Landlock, then, when started as
root, the `nobody` user), tells the parent it is ready, and then runs one code cell per request,
keeping one namespace between requests as a notebook kernel does. Requests and replies are
length-prefixed JSON on file descriptors the parent's pipes were duplicated to; the cell's own
stdout and stderr (also those of any program it starts) go to a memory file, read back after the cell.

Landlock (Linux 5.13+) is called through its three system calls with ctypes: the one PyPI binding
(`landlock`) is a development release, and the calls are small and stable (see
https://docs.kernel.org/userspace-api/landlock.html for every constant below).
"""

from __future__ import annotations

import ast
import ctypes
import json
import os
import resource
import signal
import struct
import sys
import traceback

# --- Landlock ABI constants (include/uapi/linux/landlock.h) -------------------------------------
SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446  # the same on x86_64 and arm64
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH, RULE_NET_PORT = 1, 2
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_WRITES_V1 = sum(1 << bit for bit in range(4, 13)) | FS_WRITE_FILE  # remove/make anything, write
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
PR_SET_NO_NEW_PRIVS, PR_SET_KEEPCAPS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 38, 8, 47, 2
CAP_DAC_READ_SEARCH = 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522
NOBODY = 65534
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV


class RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


class CpuTimeExceeded(Exception):
    pass


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def landlock(workdir: str, readable: list[str]) -> int:
    """Writes only beneath `workdir`, reads only beneath `readable`, no TCP, no signals out. Returns the ABI."""
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(SYS_CREATE_RULESET, None, 0, CREATE_RULESET_VERSION)
    if abi < 1:
        raise OSError(ctypes.get_errno(), "Landlock is not available in this kernel")
    handled = FS_WRITES_V1 | FS_READ_FILE | FS_READ_DIR | FS_EXECUTE
    handled |= FS_REFER if abi >= 2 else 0
    handled |= FS_TRUNCATE if abi >= 3 else 0
    handled |= FS_IOCTL_DEV if abi >= 5 else 0
    attr = RulesetAttr(handled, (NET_BIND_TCP | NET_CONNECT_TCP) if abi >= 4 else 0,
                       (SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0)
    size = ctypes.sizeof(RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = libc.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")

    def allow(path: str, rights: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return  # a folder this system does not have
        if not os.path.isdir(path):
            rights &= FILE_RIGHTS
        rule = PathBeneathAttr(rights & handled, fd)
        result = libc.syscall(SYS_ADD_RULE, ruleset, RULE_PATH_BENEATH, ctypes.byref(rule), 0)
        os.close(fd)
        if result < 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule {path} failed")

    for path in readable:
        allow(path, FS_READ_FILE | FS_READ_DIR | FS_EXECUTE)
    allow("/dev/null", FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE)
    allow(workdir, handled)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    if libc.syscall(SYS_RESTRICT_SELF, ruleset, 0) < 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    os.close(ruleset)
    return abi


def harden(config: dict) -> None:
    limits = config["limits"]
    for name, value in (("RLIMIT_AS", limits["memory_bytes"]), ("RLIMIT_FSIZE", limits["file_bytes"]),
                        ("RLIMIT_NPROC", limits["processes"]), ("RLIMIT_CORE", 0),
                        ("RLIMIT_NOFILE", limits["open_files"])):
        resource.setrlimit(getattr(resource, name), (value, value))
    # The hard CPU limit is the conversation's budget; each cell raises the soft limit by its own share.
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["conversation_cpu_s"]))
    interfaces = [name for _, name in __import__("socket").if_nameindex()]
    if interfaces != ["lo"]:
        raise OSError(f"not in an empty network namespace (interfaces: {', '.join(interfaces)})")
    if os.getuid() == 0:
        drop_root()
    landlock(config["workdir"], config["readable"])


def drop_root() -> None:
    """Become `nobody`, keeping only CAP_DAC_READ_SEARCH (also across exec).

    Root ignores RLIMIT_NPROC, so cells run as `nobody` for the process limit to hold. Python may live
    where only root can read (/root/.pyenv), hence the one capability: it lets the worker read past
    file permissions, but Landlock still confines reads to the allowed folders.
    """
    libc = _libc()
    if libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_KEEPCAPS) failed")
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    keep = 1 << CAP_DAC_READ_SEARCH
    data = (CapData * 2)(CapData(keep, keep, keep), CapData(0, 0, 0))
    if libc.capset(ctypes.byref(CapHeader(LINUX_CAPABILITY_VERSION_3, 0)), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
    if libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_DAC_READ_SEARCH, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAP_AMBIENT_RAISE) failed")


def read_frame(fd: int) -> dict | None:
    header = _read_exact(fd, 4)
    if header is None:
        return None
    body = _read_exact(fd, struct.unpack(">I", header)[0])
    return None if body is None else json.loads(body)


def _read_exact(fd: int, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def write_frame(fd: int, message: dict) -> None:
    body = json.dumps(message, ensure_ascii=False).encode()
    os.write(fd, struct.pack(">I", len(body)) + body)


def run_cell(code: str, namespace: dict) -> str | None:
    """Run like a notebook cell: a trailing expression's repr is printed. Returns the error text or None."""
    try:
        tree = ast.parse(code, "<cell>", "exec")
        last = tree.body[-1] if tree.body else None
        if isinstance(last, ast.Expr):
            tree.body.pop()
            exec(compile(tree, "<cell>", "exec"), namespace)
            value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)
            if value is not None:
                print(repr(value))
        else:
            exec(compile(tree, "<cell>", "exec"), namespace)
        return None
    except CpuTimeExceeded:
        return "CPU time limit reached: the cell was stopped (variables are kept)"
    except MemoryError:
        return "MemoryError: the memory limit was reached (variables are kept)"
    except SystemExit as exit_:
        return f"SystemExit({exit_.code!r}): the session keeps running"
    except BaseException as error:  # anything the cell raises is its result, as in a notebook
        frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == "<cell>"]
        lines = traceback.format_list(frames) if frames else []
        return "Traceback (most recent call last):\n" + "".join(lines) + "".join(
            traceback.format_exception_only(type(error), error))


def _reap() -> None:
    # As pid 1 of its pid namespace the worker inherits orphans; their zombies would count as processes.
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main() -> None:
    config = json.loads(sys.argv[1])
    requests, replies = os.dup(0), os.dup(1)
    capture = os.memfd_create("glm4-edge-cell-output", 0)
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(capture, 1)
    os.dup2(capture, 2)
    try:
        harden(config)
    except OSError as error:
        write_frame(replies, {"ready": False, "error": f"{error}"})
        return
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large file is an OSError in the cell, not a kill

    def over_cpu(signum, frame):
        raise CpuTimeExceeded()

    signal.signal(signal.SIGXCPU, over_cpu)
    me = os.getpid()
    namespace: dict = {"__name__": "__main__"}
    write_frame(replies, {"ready": True})
    limit = config["limits"]["output_bytes"]
    while True:
        request = read_frame(requests)
        if request is None:
            return
        _reap()
        os.ftruncate(capture, 0)
        os.lseek(capture, 0, os.SEEK_SET)
        sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False, buffering=1)
        sys.stderr = open(2, "w", encoding="utf-8", errors="replace", closefd=False, buffering=1)
        used = resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(
            resource.RUSAGE_SELF).ru_stime
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        soft = min(hard, int(used) + int(request["cpu_s"]) + 1)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        error = run_cell(request["code"], namespace)
        if os.getpid() != me:
            os._exit(0)  # a process the cell forked must not answer for the worker
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        _reap()
        size = os.lseek(capture, 0, os.SEEK_END)
        os.lseek(capture, 0, os.SEEK_SET)
        head = os.read(capture, limit) if size else b""
        write_frame(replies, {"output": head.decode("utf-8", "replace"), "error": error,
                              "truncated_bytes": max(0, size - len(head))})


if __name__ == "__main__":
    main()
