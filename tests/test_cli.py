"""The runtime verbs as a user runs them: generate, batch, the chat REPL in a pseudo-terminal, devices, info."""

from __future__ import annotations

import json
import subprocess

import pexpect
import pytest

from .conftest import CLI, REASONING_ANSWER, REASONING_THOUGHT
from .test_convert import assert_one_line_error, run_cli


def test_generate_streams_plain_text(scripted_model):
    result = run_cli("generate", str(scripted_model), "-p", "hi", "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout == REASONING_ANSWER + "\n"


def test_generate_passes_pipeline_properties(scripted_model):
    """--property reaches OpenVINO: the answer stays exact with other settings, and a wrong value is refused."""
    result = run_cli("generate", str(scripted_model), "-p", "hi", "--temperature", "0",
                     "--property", "DYNAMIC_QUANTIZATION_GROUP_SIZE=4096", "--property", "KV_CACHE_PRECISION=f16")
    assert result.returncode == 0, result.stderr
    assert result.stdout == REASONING_ANSWER + "\n"
    result = run_cli("generate", str(scripted_model), "-p", "hi", "--property", "KV_CACHE_PRECISION=nonsense")
    assert_one_line_error(result, "could not load")


def test_generate_reads_stdin_and_prints_json(scripted_model):
    result = subprocess.run([*CLI, "generate", str(scripted_model), "-p", "-", "--json", "--temperature", "0"],
                            input="What is 2+2?\n", capture_output=True, text=True, timeout=120)  # as `echo` writes it
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["text"] == REASONING_ANSWER and reply["reasoning"] == REASONING_THOUGHT
    assert reply["finish_reason"] == "stop" and reply["stats"]["prompt_tokens"] > 0
    direct = subprocess.run([*CLI, "generate", str(scripted_model), "-p", "What is 2+2?", "--json"],
                            capture_output=True, text=True, timeout=120)
    assert json.loads(direct.stdout)["stats"]["prompt_tokens"] == reply["stats"]["prompt_tokens"]  # no newline


def test_generate_batch_skips_bad_lines_and_resumes(tmp_path, scripted_model):
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join([json.dumps({"prompt": "one"}), "{broken",
                                 json.dumps({"messages": [{"role": "user", "content": "two"}]}),
                                 json.dumps({"nothing": 1}), json.dumps({"prompt": "three"})]) + "\n")
    out = tmp_path / "out.jsonl"
    result = run_cli("generate", str(scripted_model), "--batch", str(source), "-o", str(out), "--temperature", "0")
    assert result.returncode == 0, result.stderr
    assert "in.jsonl:2" in result.stderr and "in.jsonl:4" in result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3, 4, 5]
    assert [r.get("text") for r in records] == [REASONING_ANSWER, None, REASONING_ANSWER, None, REASONING_ANSWER]
    assert "error" in records[1] and "error" in records[3]
    # A rerun answers only what is missing: drop one answered line and run again.
    kept = [r for r in records if r["line"] != 3]
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    result = run_cli("generate", str(scripted_model), "--batch", str(source), "-o", str(out), "--temperature", "0")
    assert "1 answered, 2 already done, 2 skipped" in result.stderr
    assert [json.loads(line)["line"] for line in out.read_text().splitlines()] == [1, 2, 3, 4, 5]


def test_generate_batch_skips_only_the_line_that_does_not_fit(tmp_path, scripted_model):
    """A prompt over the context used to fail its whole group of --batch-size lines with its own error."""
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps({"prompt": p}) for p in ("one", "word " * 5000, "three")) + "\n")
    out = tmp_path / "out.jsonl"
    result = run_cli("generate", str(scripted_model), "--batch", str(source), "-o", str(out), "--temperature", "0")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("text") for r in records] == [REASONING_ANSWER, None, REASONING_ANSWER]
    assert "context" in records[1]["error"] and "in.jsonl:2" in result.stderr and "in.jsonl:1" not in result.stderr
    assert result.returncode == 0 and "2 answered, 0 already done, 1 skipped" in result.stderr


def test_generate_batch_with_no_answerable_line_fails(tmp_path, scripted_model):
    source = tmp_path / "in.jsonl"
    source.write_text("{broken\n" + json.dumps({"nothing": 1}) + "\n")
    out = tmp_path / "out.jsonl"
    result = run_cli("generate", str(scripted_model), "--batch", str(source), "-o", str(out))
    assert result.returncode == 1 and "0 answered, 0 already done, 2 skipped" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args,words", [
    (["generate", "{model}", "-p", "x", "--device", "NPU"], ["NPU not found", "available: CPU"]),
    (["generate", "/nonexistent", "-p", "x"], ["no such model folder"]),
    (["generate", "{model}", "-p", "x", "--temperature", "-2"], ["temperature"]),
    (["generate", "{model}", "-p", "   "], ["empty"]),
    (["generate", "{model}", "-p", "x", "-o", "out.jsonl"], ["--batch"]),
    (["generate", "{model}", "--batch", "/nonexistent.jsonl", "-o", "o.jsonl"], ["no such file"]),
    (["chat", "{model}", "--device", "GPU"], ["GPU not found"]),
    (["info", "/nonexistent"], ["no such model folder or store name"]),
    (["generate", "{model}"], ["-p/--prompt"]),
    (["generate", "{model}", "-p", "x", "--property", "KV_CACHE_PRECISION"], ["KEY=VALUE"]),
    (["generate", "{model}", "-p", "x", "--property", "NO_SUCH_PROPERTY=1"], ["could not load", "NO_SUCH_PROPERTY"]),
    (["serve", "{model}", "--property", "=u8"], ["KEY=VALUE"]),
])
def test_runtime_verbs_bad_input(scripted_model, args, words):
    result = run_cli(*[a.replace("{model}", str(scripted_model)) for a in args])
    assert_one_line_error(result, *words)


def test_devices_lists_cpu():
    result = run_cli("devices", "--json")
    assert result.returncode == 0
    devices = json.loads(result.stdout)
    assert devices[0]["name"] == "CPU" and devices[0]["full_name"]
    assert devices[0]["properties"]["DEVICE_TYPE"] == "integrated"  # the enum's name, not "Type.INTEGRATED"


def test_info_shows_the_manifest(scripted_model):
    result = run_cli("info", str(scripted_model))
    assert result.returncode == 0, result.stderr
    for word in ("glm4", "fp16", "weights by precision", "openvino"):
        assert word in result.stdout
    group_row = next(line for line in result.stdout.splitlines() if "group size" in line)
    assert group_row.split("group size")[1].strip(" │|") == "-"  # fp16 weights have no groups
    for field in ("ratio", "symmetric", "all layers"):  # fp16 records None: shown as "-", never "None"
        row = next(line for line in result.stdout.splitlines() if f" {field} " in line)
        assert row.split(field)[1].strip(" │|") == "-", row
    assert "None" not in result.stdout and "unquantized" in result.stdout


def spawn_chat(model, *extra: str) -> pexpect.spawn:
    child = pexpect.spawn(CLI[0], [*CLI[1:], "chat", str(model), "--temperature", "0", *extra],
                          encoding="utf-8", timeout=60, dimensions=(40, 200))
    child.expect(">>> ")
    return child


def test_chat_repl(scripted_model):
    child = spawn_chat(scripted_model, "--system", "Be brief.")
    assert "/file PATH" in child.before and "/image" not in child.before  # a text model takes no image
    child.sendline("Hello")
    child.expect("thinking: ")
    child.expect("答案你 is 42. STOP here")
    child.expect(r"tok/s")
    child.expect(">>> ")
    child.sendline("/stats")
    child.expect("TTFT")
    child.expect(">>> ")
    child.sendline("/clear")
    child.expect("conversation cleared")
    child.expect(">>> ")
    child.sendline("/stats")  # a new conversation has no answer yet
    child.expect("no answer yet")
    child.expect(">>> ")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_the_answer_not_the_program(loop_model):
    # --trim-history: however many tokens the stopped answer got before Ctrl-C landed (many on a busy
    # machine), the next turn must fit the 4096-token context.
    child = spawn_chat(loop_model, "--max-new-tokens", "4000", "--trim-history")
    child.sendline("go")
    child.expect("tick tock")
    child.sendintr()
    child.expect(r"\(stopped\)")
    child.expect(">>> ")
    child.sendline("again")  # the model is free again at once
    child.expect("tick tock")
    child.sendintr()
    child.expect(">>> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
