"""The model store and offline bundles as a user drives them: run, list, rm, verify, pack, unpack.

Real conversions and real OpenVINO inference; every test has its own store ($GLM4_EDGE_HOME).
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import socket
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest

from .conftest import CLI, REASONING_ANSWER, REASONING_PIECES
from .test_convert import assert_one_line_error, run_cli

START_TIMEOUT_S = 180
QUICK_TIMEOUT_S = 120


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "store"
    monkeypatch.setenv("GLM4_EDGE_HOME", str(home))
    return home


@pytest.fixture
def model_copy(scripted_model, tmp_path) -> Path:
    """A private copy of the scripted model (converted with file hashes) that a test may damage."""
    copy = tmp_path / "copy-fp16"
    shutil.copytree(scripted_model, copy)
    return copy


def work_folders(home: Path) -> list[str]:
    """Hidden folders in the store other than its lock folder: half-written entries would show here."""
    return sorted(p.name for p in home.iterdir() if p.name.startswith(".") and p.name != ".locks") \
        if home.is_dir() else []


def chat(*args: str, text: str = "hi\n/exit\n") -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], input=text, capture_output=True, text=True, timeout=600)


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0xFF
    path.write_bytes(bytes(data))


# --- run ---------------------------------------------------------------------------------------------

def test_run_converts_once_despite_a_concurrent_and_an_interrupted_run(home, tmp_path):
    """Two `run`s of one checkpoint: the second waits for the first; the first is stopped mid-conversion
    and leaves nothing; the second converts, chats, and every later run starts at once."""
    from glm4_edge.convert.synthetic import build_scripted_checkpoint

    source = build_scripted_checkpoint(tmp_path / "My-Scripted", REASONING_PIECES)
    name = "my-scripted-fp16"
    command = [*CLI, "run", str(source), "--weight-format", "fp16", "--temperature", "0"]
    first = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (home / f".{name}.tmp-{first.pid}").exists():  # it is converting now
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline, "the first run never started converting"
            time.sleep(0.1)
        second = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        second.stdin.write("hi\n/exit\n")
        second.stdin.close()
        second_err: list[str] = []
        reader = threading.Thread(target=lambda: second_err.extend(second.stderr), daemon=True)
        reader.start()
        deadline = time.monotonic() + QUICK_TIMEOUT_S
        while not any("waiting for another glm4-edge" in line for line in second_err):
            assert second.poll() is None, "".join(second_err)
            assert time.monotonic() < deadline, "".join(second_err)
            time.sleep(0.1)
        first.send_signal(signal.SIGTERM)
        _, first_err = first.communicate(timeout=QUICK_TIMEOUT_S)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, first_err
    assert not (home / f".{name}.tmp-{first.pid}").exists()  # the interrupted conversion left nothing

    answer = second.stdout.read()
    assert second.wait(timeout=600) == 0, "".join(second_err)
    reader.join(timeout=10)
    assert REASONING_ANSWER in answer, answer
    assert f"converted {source} into the store as {name}" in "".join(second_err)
    assert [p.name for p in home.iterdir() if not p.name.startswith(".")] == [name]
    assert work_folders(home) == []

    again = chat("run", str(source), "--weight-format", "fp16", "--temperature", "0")
    assert again.returncode == 0, again.stderr
    assert REASONING_ANSWER in again.stdout and "converted" not in again.stderr  # started at once
    by_name = run_cli("generate", name, "-p", "hi", "--temperature", "0")
    assert by_name.returncode == 0, by_name.stderr
    assert by_name.stdout == REASONING_ANSWER + "\n"
    listing = run_cli("list").stdout.splitlines()
    assert listing[0].split() == ["NAME", "FAMILY", "FORMAT", "QUALITY", "SIZE", "DEVICE", "CREATED"]
    row = listing[1].split()
    assert row[:4] == [name, "glm4", "fp16", "-"] and row[-2] == "cpu" and row[-1].startswith("20"), listing
    verified = run_cli("verify", name)
    assert verified.returncode == 0 and "verified" in verified.stdout, verified.stderr


def test_run_chats_with_a_converted_folder_or_store_name_without_converting(home, scripted_model):
    result = chat("run", str(scripted_model), "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert REASONING_ANSWER in result.stdout and "converted" not in result.stderr
    assert not home.exists() or not any(home.iterdir())


@pytest.mark.parametrize("source, words", [
    ("THUDM/GLM-4-9B-0414", ["THUDM/GLM-4-9B-0414", "HF_HUB_OFFLINE"]),  # a hub id with no way to download it
    ("no-such-model", ["no such model folder or store name", "glm4-edge list"]),
    ("{empty}", ["neither a converted model", "config.json"]),
    ("{source} --name Bad/Name", ["not a valid model name"]),
])
def test_run_bad_sources_are_one_line_and_leave_the_store_empty(home, tmp_path, source, words):
    (tmp_path / "empty").mkdir()
    args = source.replace("{empty}", str(tmp_path / "empty")).replace("{source}", str(tmp_path / "empty")).split()
    assert_one_line_error(run_cli("run", *args, env={"HF_HUB_OFFLINE": "1"}, timeout=QUICK_TIMEOUT_S), *words)
    assert not home.exists() or not [p for p in home.iterdir() if p.name != ".locks"]


# --- list and rm ---------------------------------------------------------------------------------------

def test_list_shows_the_store_and_rm_removes_only_store_entries(home, scripted_model, tmp_path):
    home.mkdir()
    shutil.copytree(scripted_model, home / "a-model")
    shutil.copytree(scripted_model, home / "b-model")
    manifest = json.loads((home / "b-model" / "glm4_edge.json").read_text())
    manifest["compression"]["weight_error"] = {"quality_class": "balanced"}  # as convert measures it
    (home / "b-model" / "glm4_edge.json").write_text(json.dumps(manifest))
    stale = home / ".c-model.tmp-999999999"  # left by a process killed mid-conversion (no such pid)
    stale.mkdir()
    (stale / "openvino_model.bin").write_bytes(b"0" * 1000)

    result = run_cli("list")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert set(rows) == {"a-model", "b-model"}
    assert rows["a-model"][1:4] == ["glm4", "fp16", "-"] and rows["b-model"][3] == "balanced"
    assert rows["a-model"][4:6] == ["1.2", "MB"] and rows["a-model"][6] == "cpu"
    assert not stale.exists() and "removed unfinished work" in result.stderr
    records = [json.loads(line) for line in run_cli("list", "--json").stdout.splitlines()]
    assert [r["name"] for r in records] == ["a-model", "b-model"] and records[1]["quality"] == "balanced"

    # Every verb takes a store name; a typo gets a suggestion.
    assert_one_line_error(run_cli("generate", "b-modle", "-p", "x"), "no such model folder", "did you mean b-model")
    info = run_cli("info", "a-model")
    assert info.returncode == 0 and "glm4" in info.stdout, info.stderr

    outside = tmp_path / "not-in-the-store"
    outside.mkdir()
    for names, words in ((["a-model", "nope"], ["nope: no such model in the store"]),
                         ([str(outside)], ["no such model in the store"]),
                         ([".locks"], ["no such model in the store"])):
        assert_one_line_error(run_cli("rm", *names), *words)
    assert (home / "a-model").is_dir() and outside.is_dir()  # a failed rm removes nothing
    result = run_cli("rm", "a-model")
    assert result.returncode == 0 and result.stdout.startswith("removed a-model ("), result.stderr
    assert not (home / "a-model").exists() and (home / "b-model").is_dir()
    assert work_folders(home) == []


# --- verify --------------------------------------------------------------------------------------------

def test_verify_names_the_damaged_file_and_a_kiosk_or_server_refuses_it(model_copy):
    result = run_cli("verify", str(model_copy))
    assert result.returncode == 0 and "verified" in result.stdout and "match their SHA-256" in result.stdout
    manifest = json.loads((model_copy / "glm4_edge.json").read_text())
    assert "glm4_edge.json" not in manifest["files"] and "openvino_model.bin" in manifest["files"]

    flip_byte(model_copy / "openvino_model.bin")  # same size: only the hash can tell
    assert_one_line_error(run_cli("verify", str(model_copy)), "failed verification", "openvino_model.bin",
                          "SHA-256 differs")
    assert_one_line_error(run_cli("serve", str(model_copy), "--port", "0", timeout=QUICK_TIMEOUT_S),
                          "openvino_model.bin")
    with socket.socket() as sock:  # never bound to: the kiosk refuses to start first
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    assert_one_line_error(run_cli("ui", str(model_copy), "--kiosk", "--port", port, timeout=QUICK_TIMEOUT_S),
                          "openvino_model.bin")


def test_every_load_checks_file_sizes(model_copy):
    path = model_copy / "openvino_tokenizer.bin"
    path.write_bytes(path.read_bytes()[:-10])  # a copy cut short
    assert_one_line_error(run_cli("generate", str(model_copy), "-p", "hi"), "openvino_tokenizer.bin", "bytes")


def test_models_without_hashes_load_but_are_not_verifiable(model_copy):
    manifest_path = model_copy / "glm4_edge.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["files"]  # as an older glm4-edge wrote it
    manifest_path.write_text(json.dumps(manifest))
    result = run_cli("verify", str(model_copy))
    assert result.returncode == 1 and "not verifiable" in result.stdout, result.stderr
    result = run_cli("generate", str(model_copy), "-p", "hi", "--temperature", "0")
    assert result.returncode == 0 and result.stdout == REASONING_ANSWER + "\n", result.stderr


# --- pack and unpack ------------------------------------------------------------------------------------

def test_pack_and_unpack_carry_a_model_into_the_store_verified(home, scripted_model, tmp_path):
    archive = tmp_path / "usb" / "model.tar"
    archive.parent.mkdir()
    result = run_cli("pack", str(scripted_model), "-o", str(archive))
    assert result.returncode == 0 and archive.is_file(), result.stderr
    assert [p.name for p in archive.parent.iterdir()] == ["model.tar"]  # no temporary litter
    assert_one_line_error(run_cli("pack", str(scripted_model), "-o", str(archive)), "already exists")

    result = run_cli("unpack", str(archive))
    assert result.returncode == 0, result.stderr
    name = scripted_model.name
    assert f"unpacked {name}" in result.stdout and "every SHA-256 checked" in result.stdout
    result = run_cli("generate", name, "-p", "hi", "--temperature", "0")
    assert result.returncode == 0 and result.stdout == REASONING_ANSWER + "\n", result.stderr
    assert run_cli("verify", name).returncode == 0

    assert_one_line_error(run_cli("unpack", str(archive)), "already in the store", "--force")
    assert run_cli("unpack", str(archive), "--force").returncode == 0
    assert run_cli("unpack", str(archive), "--name", "kiosk-copy").returncode == 0
    assert sorted(p.name for p in home.iterdir() if not p.name.startswith(".")) == ["kiosk-copy", name]
    assert work_folders(home) == []


def _tar(path: Path, members: list[tuple[str, bytes | None, str | None]]) -> Path:
    """A tar of (name, data, link target) members, ending with a bundle index for the regular files."""
    with tarfile.open(path, "w") as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        files = {name.split("/", 1)[-1]: {"size": len(data), "sha256": ""} for name, data, link in members if data}
        body = json.dumps({"format": 1, "files": files}).encode()
        info = tarfile.TarInfo("glm4-edge-bundle.json")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    return path


def test_unpack_refuses_damaged_or_unsafe_archives_and_adds_nothing(home, scripted_model, tmp_path):
    from glm4_edge.bundle import pack

    good = pack(scripted_model, tmp_path / "good.tar").archive
    data = good.read_bytes()
    with tarfile.open(good) as tar:
        member = tar.getmember(f"{scripted_model.name}/openvino_model.bin")
    corrupted = tmp_path / "corrupted.tar"
    corrupted.write_bytes(data)
    flip_byte(corrupted, member.offset_data + member.size // 2)
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"not an archive" * 100)
    escape = _tar(tmp_path / "escape.tar", [("m/config.json", b"{}", None), ("m/../../evil", b"x", None)])
    link = _tar(tmp_path / "link.tar", [("m/config.json", b"{}", None), ("m/openvino_model.bin", None, "/etc/passwd")])

    for archive, words in ((corrupted, ["failed verification", "openvino_model.bin", "SHA-256"]),
                           (truncated, ["truncated or corrupted"]),
                           (garbage, ["not a tar archive", "pack"]),
                           (escape, ["refusing", "outside the model folder"]),
                           (link, ["refusing", "link"]),
                           (tmp_path / "missing.tar", ["no such archive"])):
        assert_one_line_error(run_cli("unpack", str(archive)), *words)
    assert not home.exists() or not [p for p in home.iterdir() if p.name != ".locks"]
    assert not (tmp_path / "evil").exists()
