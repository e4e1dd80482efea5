"""`glm4-edge eval`: task accuracy, and how far a (compressed) model drifts from its reference.

Agreement follows the who-what-benchmark idea: on the same token sequences, compare next-token
distributions (top-1 agreement, mean KL divergence, perplexity ratio), and compare greedy answers.
Answer similarity is a character-level ratio (difflib) rather than an embedding model's cosine,
because an embedding model would have to be downloaded and this command runs offline.
"""

from __future__ import annotations

import difflib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import glm_format
from .errors import Glm4EdgeError, ModelFormatError

DEFAULT_CASES_PER_TASK = 100
MAX_AGREEMENT_TEXTS = 64
MAX_ANSWER_TOKENS = 48


@dataclass
class Case:
    task: str
    messages: list[dict[str, Any]]
    expected: str
    last_number: bool = False  # the answer's last number must be `expected` (not just contain it)

    def passed(self, reply: str) -> bool:
        if self.last_number:
            numbers = re.findall(r"\d+", reply)
            return bool(numbers) and numbers[-1] == self.expected
        return self.expected in reply


@dataclass
class TaskScore:
    task: str
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@dataclass
class Agreement:
    texts: int
    tokens: int
    top1_agreement: float
    mean_kl: float
    perplexity: float
    reference_perplexity: float
    answer_similarity: float
    relative_logit_rmse: float = 0.0  # RMS(logits - reference logits) / RMS(reference logits)

    @property
    def perplexity_ratio(self) -> float:
        return self.perplexity / self.reference_perplexity


@dataclass
class EvalReport:
    model: str
    reference: str | None
    tasks: list[TaskScore] = field(default_factory=list)
    agreement: Agreement | None = None
    size_bytes: int = 0
    decode_tokens_per_s: float | None = None
    weight_error: dict[str, Any] | None = None  # glm4_edge.weight_error.WeightError.summary()
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for score, entry in zip(self.tasks, data["tasks"], strict=True):
            entry["accuracy"] = round(score.accuracy, 4)
        if self.agreement:
            data["agreement"]["perplexity_ratio"] = round(self.agreement.perplexity_ratio, 4)
        return data


# --- models under test: OpenVINO folders or Hugging Face checkpoints ------------------------------

class OpenVINOEngine:
    """A converted folder: answers through `glm4_edge.Model`, logits straight from the IR."""

    def __init__(self, folder: Path, device: str = "CPU", properties: dict[str, Any] | None = None):
        from .loading import load

        self.folder = folder
        self.properties = dict(properties or {})
        self.model = load(folder, device, properties=self.properties)
        self._request = None

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self.model.tokenizer.encode(text, add_special_tokens=False).input_ids.data[0]]

    def answer(self, messages: list[dict]) -> tuple[str, float | None]:
        reply = self.model.generate(messages, temperature=0.0, max_new_tokens=MAX_ANSWER_TOKENS)
        return reply.text, reply.stats.tokens_per_s

    def logits(self, ids: list[int]) -> np.ndarray:
        if self._request is None:
            import openvino as ov

            compiled = ov.Core().compile_model(self.folder / "openvino_model.xml", "CPU",
                                               {"INFERENCE_PRECISION_HINT": "f32", **self.properties})
            self._request = compiled.create_infer_request()
            self._inputs = {port.get_any_name() for port in compiled.inputs}
        inputs = {"input_ids": np.array([ids], dtype=np.int64),
                  "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
        if "position_ids" in self._inputs:
            inputs["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
        if "beam_idx" in self._inputs:
            inputs["beam_idx"] = np.zeros((1,), dtype=np.int32)
        self._request.reset_state()
        return np.array(self._request.infer(inputs)["logits"][0], dtype=np.float32)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("openvino_model.*"))


def open_engine(path: Path, device: str = "CPU", properties: dict[str, Any] | None = None):
    path = Path(path)
    if (path / "openvino_model.xml").is_file():
        return OpenVINOEngine(path, device, properties)
    if (path / "config.json").is_file():
        try:
            from .convert.reference import TorchEngine
        except ImportError:
            raise Glm4EdgeError("a Hugging Face reference needs PyTorch: pip install 'glm4-edge[convert]'") from None
        return TorchEngine(path)
    raise ModelFormatError(f"{path} is neither a converted model folder nor a Hugging Face checkpoint")


# --- cases ----------------------------------------------------------------------------------------

def builtin_cases(per_task: int, seed: int | None = None) -> list[Case]:
    """Held-out cases of the tiny model's curriculum: a seed its training never used, names it never saw."""
    from . import tiny_tasks

    seed = tiny_tasks.HELD_OUT_SEED if seed is None else seed
    cases = []
    for make in (tiny_tasks.addition_cases, tiny_tasks.recall_cases):
        for case in make(seed, per_task):
            cases.append(Case(case["task"], case["messages"], case["expected"], case["task"] == "addition"))
    return cases


def file_cases(path: Path) -> list[Case]:
    """JSONL lines: {"prompt" | "messages", "expected": substring, "task"?}."""
    if not path.is_file():
        raise Glm4EdgeError(f"--tasks {path}: no such file; use 'builtin' or a .jsonl file")
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            messages = record.get("messages") or [{"role": "user", "content": record["prompt"]}]
            cases.append(Case(str(record.get("task", "file")), messages, str(record["expected"])))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise Glm4EdgeError(f"--tasks {path}:{number}: needs 'prompt' or 'messages' and 'expected'") from None
    if not cases:
        raise Glm4EdgeError(f"--tasks {path} holds no cases")
    return cases


def agreement_texts(cases: list[Case], answers: list[str]) -> list[str]:
    """Prompts followed by the reference's own answers: the text whose next tokens are compared."""
    return [glm_format.render_prompt(case.messages) + "\n" + answer
            for case, answer in zip(cases, answers, strict=True)][:MAX_AGREEMENT_TEXTS]


# --- metrics --------------------------------------------------------------------------------------

def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


@dataclass
class OutputError:
    """Next-token distributions of a model against a reference on the same token ids."""

    tokens: int
    top1_agreement: float
    mean_kl: float  # KL(reference || model), nats per token
    relative_logit_rmse: float  # RMS(logits - reference) / RMS(reference), over positions and vocabulary
    perplexity: float
    reference_perplexity: float


def output_error(got_logits: np.ndarray, want_logits: np.ndarray, ids: list[int] | None = None) -> OutputError:
    """Compare [positions, vocab] logits with a reference's; with `ids`, also the perplexity of ids[1:].

    With `ids`, the last position is dropped (it predicts a token outside the text). The vocabularies
    are cut to the shorter one (padded heads).
    """
    vocab = min(got_logits.shape[-1], want_logits.shape[-1])
    got, want = np.asarray(got_logits, np.float64)[:, :vocab], np.asarray(want_logits, np.float64)[:, :vocab]
    if ids is not None:
        got, want = got[:len(ids) - 1], want[:len(ids) - 1]
    log_got, log_want = _log_softmax(got), _log_softmax(want)
    power = float(np.square(want).sum())
    rmse = float(np.sqrt(np.square(got - want).sum() / power)) if power else 0.0
    ppl = ppl_reference = float("nan")
    if ids is not None:
        targets = np.array(ids[1:])
        rows = np.arange(len(targets))
        ppl = float(np.exp(-log_got[rows, targets].mean()))
        ppl_reference = float(np.exp(-log_want[rows, targets].mean()))
    return OutputError(len(got), float((log_got.argmax(-1) == log_want.argmax(-1)).mean()),
                       float((np.exp(log_want) * (log_want - log_got)).sum(-1).mean()), rmse, ppl, ppl_reference)


def compare_logits(model, reference, texts: list[str]) -> OutputError:
    """Output error over the texts' next tokens: token-weighted means, RMSE over all logits."""
    parts: list[tuple[int, OutputError, float]] = []
    for text in texts:
        ids = reference.encode(text)
        if len(ids) < 2:
            continue
        got, want = model.logits(ids), reference.logits(ids)
        error = output_error(got, want, ids)
        vocab = min(got.shape[-1], want.shape[-1])
        parts.append((error.tokens, error, float(np.square(np.asarray(want[:-1, :vocab], np.float64)).sum())))
    if not parts:
        raise Glm4EdgeError("no text to compare: the cases rendered to fewer than 2 tokens")
    tokens = sum(n for n, _, _ in parts)
    power = sum(p for _, _, p in parts)

    def mean(key: str) -> float:
        return sum(n * getattr(e, key) for n, e, _ in parts) / tokens

    rmse = float(np.sqrt(sum(p * e.relative_logit_rmse ** 2 for _, e, p in parts) / power)) if power else 0.0
    nll = sum(n * np.log(e.perplexity) for n, e, _ in parts) / tokens
    nll_reference = sum(n * np.log(e.reference_perplexity) for n, e, _ in parts) / tokens
    return OutputError(tokens, mean("top1_agreement"), mean("mean_kl"), rmse, float(np.exp(nll)),
                       float(np.exp(nll_reference)))


def similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


_REFERENCES: dict[tuple[str, str], tuple[Any, list[str]]] = {}


def _reference(path: Path, device: str, cases: list[Case]) -> tuple[Any, list[str]]:
    """The reference engine and its answers, kept for the process: comparing several compressed
    variants with one reference then costs the reference's generations once."""
    key = (str(path.resolve()), json.dumps([asdict(c) for c in cases], sort_keys=True))
    if key not in _REFERENCES:
        engine = open_engine(path, device)
        _REFERENCES[key] = (engine, [engine.answer(case.messages)[0] for case in cases])
    return _REFERENCES[key]


def evaluate(model_path: Path, reference_path: Path | None = None, tasks: str = "builtin",
             cases_per_task: int = DEFAULT_CASES_PER_TASK, device: str = "CPU",
             properties: dict[str, Any] | None = None) -> EvalReport:
    """`properties` go to the model under test (OpenVINO folders only), not to the reference."""
    started = time.perf_counter()
    cases = builtin_cases(cases_per_task) if tasks == "builtin" else file_cases(Path(tasks))
    model = open_engine(model_path, device, properties)
    report = EvalReport(model=str(model_path), reference=str(reference_path) if reference_path else None,
                        size_bytes=model.size_bytes())
    answers, rates = [], []
    scores: dict[str, TaskScore] = {}
    for case in cases:
        text, rate = model.answer(case.messages)
        answers.append(text)
        if rate:
            rates.append(rate)
        score = scores.setdefault(case.task, TaskScore(case.task, 0, 0))
        score.total += 1
        score.correct += int(case.passed(text))
    report.tasks = list(scores.values())
    report.decode_tokens_per_s = float(np.median(rates)) if rates else None
    if reference_path is not None:
        reference, reference_answers = _reference(Path(reference_path), device, cases)
        texts = agreement_texts(cases, reference_answers)
        error = compare_logits(model, reference, texts)
        similar = float(np.mean([similarity(a, b) for a, b in zip(answers, reference_answers, strict=True)]))
        report.agreement = Agreement(len(texts), error.tokens, error.top1_agreement, error.mean_kl, error.perplexity,
                                     error.reference_perplexity, similar, error.relative_logit_rmse)
        report.weight_error = _weight_error(Path(model_path), Path(reference_path))
    report.seconds = time.perf_counter() - started
    return report


def _weight_error(model_path: Path, reference_path: Path) -> dict[str, Any] | None:
    """Weight error of a converted model against its safetensors source; None where that does not apply."""
    from . import weight_error

    if not (model_path / "openvino_model.xml").is_file() or not any(reference_path.glob("*.safetensors")):
        return None
    try:
        return weight_error.ir_weight_error(model_path, reference_path).summary()
    except ModelFormatError:
        return None
