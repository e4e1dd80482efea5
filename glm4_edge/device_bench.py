"""Which device runs this model fastest here: measure each, record the winner, let AUTO use it.

Each candidate (every available CPU/GPU/NPU the model can run on, and CPU with speculative decoding
when a draft is given) runs `glm4-edge bench --json` in its own process: the peak memory is then that
device's alone, and a driver that crashes takes down only its own measurement. The winner, by decode
tokens/s, is recorded per model fingerprint in DEVICE_CHOICE_FILE under the user's config folder;
`--device AUTO` loads on it while the model, OpenVINO version and device are unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from . import devices
from .compile_cache import model_fingerprint, openvino_version
from .errors import Glm4EdgeError
from .manifest import read_manifest

CONFIG_ENV = "GLM4_EDGE_CONFIG_DIR"
DEVICE_CHOICE_FILE = "device-choice.json"
# Short runs: enough to rank devices, which differ by multiples, not to publish numbers (`bench` does that).
DEFAULT_PROMPT_TOKENS = 256
DEFAULT_GEN_TOKENS = 32
DEFAULT_RUNS = 2
CANDIDATE_TIMEOUT_S = 1800  # a 9B model compiling for a GPU or NPU the first time takes minutes
ERROR_CHARS = 300


@dataclass
class Candidate:
    device: str
    draft: Path | None = None

    @property
    def label(self) -> str:
        return f"{self.device} + draft" if self.draft else self.device


@dataclass
class DeviceScore:
    label: str
    device: str
    draft: str | None = None
    tokens_per_s: float | None = None  # decode, median over runs
    ttft_s: float | None = None  # median
    prefill_tokens_per_s: float | None = None
    peak_memory_bytes: int | None = None  # the bench process's peak RSS (GPU memory not included)
    load_s: float | None = None  # second load: what a restart costs with the compile cache warm
    error: str | None = None  # why this candidate could not be measured


@dataclass
class DeviceChoice:
    model: str
    fingerprint: str
    device: str
    draft: str | None
    tokens_per_s: float
    ttft_s: float | None
    openvino: str
    measured: str
    prompt_tokens: int
    gen_tokens: int
    scores: list[DeviceScore] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def config_dir() -> Path:
    root = os.environ.get(CONFIG_ENV) or os.path.join(
        os.environ.get("XDG_CONFIG_HOME", os.path.expanduser("~/.config")), "glm4-edge")
    return Path(root)


def candidates(folder: Path, draft: Path | None = None) -> tuple[list[Candidate], list[DeviceScore]]:
    """The devices worth measuring, and those skipped with the reason (as scores with an error)."""
    manifest = read_manifest(folder)
    chosen, skipped = [], []
    for name in devices.available_devices():
        base = devices.base_device(name)
        if base == "NPU" and (manifest is None or manifest.target_device != "npu"):
            skipped.append(DeviceScore(name, name, error="not converted for the NPU (convert with --device npu)"))
            continue
        if base in ("CPU", "GPU", "NPU"):
            chosen.append(Candidate(name))
    if draft is not None:
        chosen.append(Candidate("CPU", Path(draft)))
    return chosen, skipped


def bench_command(folder: Path, candidate: Candidate, prompt_tokens: int, gen_tokens: int, runs: int,
                  extra: list[str] | None = None) -> list[str]:
    command = [sys.executable, "-m", "glm4_edge.cli.main", "bench", str(folder), "--device", candidate.device,
               "--prompt-tokens", str(prompt_tokens), "--gen-tokens", str(gen_tokens), "--runs", str(runs),
               "--warmup", "1", "--json", *(extra or [])]
    if candidate.draft is not None:
        command += ["--draft", str(candidate.draft)]
    return command


def measure(folder: Path, candidate: Candidate, prompt_tokens: int, gen_tokens: int, runs: int,
            extra: list[str] | None = None) -> DeviceScore:
    """One candidate in a child `glm4-edge bench`; its failure becomes the score's error, not ours."""
    score = DeviceScore(candidate.label, candidate.device, str(candidate.draft) if candidate.draft else None)
    command = bench_command(folder, candidate, prompt_tokens, gen_tokens, runs, extra)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CANDIDATE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        score.error = f"no result in {CANDIDATE_TIMEOUT_S} s"
        return score
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        score.error = (lines[-1] if lines else f"exit status {done.returncode}")[:ERROR_CHARS]
        return score
    result = json.loads(done.stdout)
    score.tokens_per_s = result["tokens_per_s"]["median"]
    score.ttft_s = result["ttft"]["median"]
    score.prefill_tokens_per_s = result["prefill_tokens_per_s"]["median"]
    score.peak_memory_bytes = result["peak_memory"]
    score.load_s = result["load"]["second_s"]
    return score


def winner(scores: list[DeviceScore]) -> DeviceScore | None:
    """The fastest decode; TTFT breaks a tie. None when nothing could be measured."""
    measured = [s for s in scores if s.error is None and s.tokens_per_s]
    if not measured:
        return None
    return max(measured, key=lambda s: (s.tokens_per_s, -(s.ttft_s or 0.0)))


def bench_devices(folder: Path, *, draft: Path | None = None, prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
                  gen_tokens: int = DEFAULT_GEN_TOKENS, runs: int = DEFAULT_RUNS, extra: list[str] | None = None,
                  progress: Callable[[str], None] | None = None, record_choice: bool = True) -> DeviceChoice:
    """Measure every candidate, record the winner for `folder`; Glm4EdgeError when none could run."""
    from .loading import check_model_folder

    folder = check_model_folder(folder).resolve()
    if draft is not None:
        draft = check_model_folder(draft).resolve()
    chosen, scores = candidates(folder, draft)
    for candidate in chosen:
        if progress:
            progress(f"measuring {candidate.label} ({prompt_tokens}-token prompt, {gen_tokens} tokens, {runs} runs)")
        scores.append(measure(folder, candidate, prompt_tokens, gen_tokens, runs, extra))
    best = winner(scores)
    if best is None:
        reasons = "; ".join(f"{s.label}: {s.error}" for s in scores)
        raise Glm4EdgeError(f"no device could run {folder}: {reasons}")
    choice = DeviceChoice(str(folder), model_fingerprint(folder), best.device, best.draft, best.tokens_per_s or 0.0,
                          best.ttft_s, openvino_version(), datetime.now(UTC).isoformat(timespec="seconds"),
                          prompt_tokens, gen_tokens, scores)
    if record_choice:
        record(choice)
    return choice


def _read_all() -> dict[str, dict]:
    try:
        data = json.loads((config_dir() / DEVICE_CHOICE_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def record(choice: DeviceChoice) -> Path:
    """Store the choice under the model's fingerprint (atomically; other models' choices kept)."""
    path = config_dir() / DEVICE_CHOICE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _read_all()
    data[choice.fingerprint] = choice.as_dict()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


def recorded(folder: Path) -> DeviceChoice | None:
    """The choice recorded for this exact model (same fingerprint and OpenVINO version), if any."""
    try:
        fingerprint = model_fingerprint(folder)
    except OSError:
        return None
    data = _read_all().get(fingerprint)
    if not data or data.get("openvino") != openvino_version():
        return None
    try:
        scores = [DeviceScore(**s) for s in data.pop("scores", [])]
        return DeviceChoice(**data, scores=scores)
    except TypeError:  # written by another version: measure again
        return None


def resolve_auto(folder: Path, device: str) -> str:
    """`device`, except plain "AUTO" becomes the recorded winner while that device is still here."""
    if device.strip().upper() != "AUTO":
        return device
    choice = recorded(folder)
    if choice is None or not any(a == choice.device for a in devices.available_devices()):
        return device
    return choice.device
