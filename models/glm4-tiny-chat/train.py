"""Train the tiny GLM-4 chat model in this folder from scratch on the synthetic tasks of glm4_edge/tiny_tasks.py.

    .venv/bin/python models/glm4-tiny-chat/train.py [--out DIR] [--steps N] [--minutes M] [--threads T]

Seeded and deterministic on one machine (one CPU thread unless --threads): the tokenizer is a
byte-level BPE from `glm4_edge.convert.synthetic.build_tokenizer` trained on the task phrases, the
Chinese name characters and the Latin names' consonant-vowel pairs, with the merges between digits
removed so that numbers are spelled digit by digit; training batch k is drawn
from `tasks.*_cases(seed=k, ...)`, and the held-out check uses `tasks.HELD_OUT_SEED`, which no
training batch uses. Loss is taken only on the assistant replies (`\\n{answer}<|user|>`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import sys
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning threads made
# every step ~6x slower; on an idle one it costs nothing measurable.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root, for `glm4_edge` without an install

from glm4_edge.convert.synthetic import build_tokenizer as build_bpe  # noqa: E402
from glm4_edge.convert.synthetic import chat_template  # noqa: E402

from glm4_edge import tiny_tasks as tasks  # noqa: E402

PROMPT_PREFIX = "[gMASK]<sop>"
ROLE_TAGS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END_OF_TURN = "<|user|>"
STOP_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")
IGNORE = -100

# Architecture: GLM-4 layout, GQA with 2 KV heads, INT4 group 128 fits hidden and intermediate.
HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 256, 768, 4, 8, 2, 32
BPE_VOCAB = 1000
BATCH = {"addition": 32, "recall": 24, "greeting": 4}  # cases per training step
# Each consonant-vowel pair of tiny_tasks.syllables() is this many lines of the BPE corpus, more than
# any phrase (50), so their merges come first and a name like Lumeri is three tokens: Lu me ri.
SYLLABLE_LINES = 200
MICRO_BATCH = 16
DEFAULT_STEPS = 1700
LEARNING_RATE, WARMUP, WEIGHT_DECAY = 2e-3, 60, 0.05
EVAL_CASES = 200
# One thread: on this model a second one costs CPU time for little wall time (with 40/16/4 cases a
# step, 0.73 CPU-s a step on one thread over 41 steps, 0.81 on two over a whole run, 2-core machine).
THREADS = 1


def build_tokenizer():
    """build_tokenizer() on the task phrases, minus every digit-digit merge: one token per digit."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    fast = build_bpe(vocab_size=BPE_VOCAB,
                     extra_corpus=tasks.corpus_lines() * 50 + tasks.syllables() * SYLLABLE_LINES)
    data = json.loads(fast.backend_tokenizer.to_str())
    model = data["model"]

    def numeric(token: str) -> bool:
        return len(token) > 1 and all("0" <= ch <= "9" for ch in token)

    ordered = sorted(model["vocab"].items(), key=lambda item: item[1])
    kept = [token for token, _ in ordered if not numeric(token)]
    model["vocab"] = {token: index for index, token in enumerate(kept)}
    model["merges"] = [pair for pair in model["merges"] if not numeric("".join(pair))]
    for index, added in enumerate(sorted(data["added_tokens"], key=lambda item: item["id"])):
        added["id"] = len(kept) + index
    tokenizer = Tokenizer.from_str(json.dumps(data))
    specials = [added["content"] for added in sorted(data["added_tokens"], key=lambda item: item["id"])]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        additional_special_tokens=specials[1:], clean_up_tokenization_spaces=False,
    )
    fast.padding_side = "left"
    return fast


def check_name_tokens(tokenizer) -> None:
    """Every Chinese name character is one token wherever a name stands, next to any other one.

    Raises SystemExit naming the first name that BPE cuts into byte pieces (a merge learnt from a
    task phrase can join one character's last byte to the next one's first).
    """
    contexts = [table[lang] for table in (tasks.NAME_STATEMENT, tasks.NAME_ACK, tasks.NAME_ANSWER)
                for lang in ("en", "zh")]
    pairs = [a + b for a in tasks.SURNAMES for b in tasks.GIVEN_NAME_CHARACTERS]
    pairs += [a + b for a in tasks.GIVEN_NAME_CHARACTERS for b in tasks.GIVEN_NAME_CHARACTERS]
    for name in pairs:
        for context in contexts:
            ids = tokenizer(context.format(name=name), add_special_tokens=False)["input_ids"]
            pieces = [tokenizer.decode([token]) for token in ids]
            if not all(character in pieces for character in name):
                raise SystemExit(f"the tokenizer cuts the name {name} into {pieces}; drop one of its characters "
                                 "from tiny_tasks.SURNAMES / GIVEN_NAME_CHARACTERS")


def glm4_chat_template() -> str:
    """synthetic.chat_template() keeping the newline after `<|assistant|>` in earlier turns.

    Its `{%- set` tag strips that newline, so a history rendered by the template would not match
    `glm_format.render_prompt` nor what this model was trained on.
    """
    template = chat_template()
    return template.replace("<|assistant|>\n{%- set", "<|assistant|>\n{% set")


def encode(tokenizer, case: dict, with_answer: bool = True) -> tuple[list[int], list[int]]:
    """Token ids and labels of one conversation; labels are -100 except on assistant replies."""
    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    messages = list(case["messages"])
    if with_answer:
        messages.append({"role": "assistant", "content": case["answer"]})
    input_ids, labels = ids(PROMPT_PREFIX), []
    labels += [IGNORE] * len(input_ids)
    for index, message in enumerate(messages):
        role = message["role"]
        if role == "assistant":
            head, body = ids(ROLE_TAGS[role]), ids("\n" + message["content"] + END_OF_TURN)
            input_ids += head + body
            labels += [IGNORE] * len(head) + body
            continue
        if index > 0 and messages[index - 1]["role"] == "assistant" and role == "user":
            part = ids("\n" + message["content"])  # the <|user|> tag closed the reply before it
        else:
            part = ids(ROLE_TAGS[role] + "\n" + message["content"])
        input_ids += part
        labels += [IGNORE] * len(part)
    if not with_answer:
        input_ids += ids(ROLE_TAGS["assistant"])
    return input_ids, labels


def training_batch(tokenizer, step: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    """The cases of step `step`, sorted by length into micro-batches to waste little on padding."""
    cases = []
    for task, count in BATCH.items():
        cases += tasks.GENERATORS[task](step, count)
    encoded = sorted((encode(tokenizer, case) for case in cases), key=lambda pair: len(pair[0]))
    batches = []
    for first in range(0, len(encoded), MICRO_BATCH):
        chunk = encoded[first: first + MICRO_BATCH]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (ids, targets) in enumerate(chunk):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(ids)] = torch.tensor(targets)
            mask[row, : len(ids)] = 1
        batches.append({"input_ids": input_ids, "labels": labels, "attention_mask": mask})
    return batches


def make_model(tokenizer):
    from transformers import GenerationConfig, Glm4Config, Glm4ForCausalLM

    stop_ids = [tokenizer.convert_tokens_to_ids(token) for token in STOP_TOKENS]
    config = Glm4Config(
        vocab_size=(len(tokenizer) + 63) // 64 * 64, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
        max_position_embeddings=4096, rms_norm_eps=1e-5, attention_bias=True, partial_rotary_factor=0.5,
        pad_token_id=stop_ids[0], eos_token_id=stop_ids, tie_word_embeddings=False,
    )
    model = Glm4ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=stop_ids, pad_token_id=stop_ids[0],
                                               do_sample=False)
    return model


def lr_at(step: int, steps: int) -> float:
    if step < WARMUP:
        return LEARNING_RATE * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, steps - WARMUP)
    return LEARNING_RATE * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(model, tokenizer, steps: int, minutes: float | None) -> tuple[int, float]:
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=LEARNING_RATE, betas=(0.9, 0.98), eps=1e-8)
    model.train()
    start, running = time.monotonic(), None
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps)
        batches = training_batch(tokenizer, step, pad_id)
        total = sum(int((batch["labels"] != IGNORE).sum()) for batch in batches)
        optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        for batch in batches:
            part = model(**batch).loss * (int((batch["labels"] != IGNORE).sum()) / total)
            part.backward()
            loss += part.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running = float(loss) if running is None else 0.95 * running + 0.05 * float(loss)
        elapsed = time.monotonic() - start
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {running:.4f}  lr {lr_at(step, steps):.2e}  {elapsed / 60:5.1f} min  "
                  f"{cpu_seconds() / 60:5.1f} CPU-min", flush=True)
        if minutes is not None and elapsed > minutes * 60:
            print(f"stopping at step {step}: the {minutes} minute budget is spent", flush=True)
            return step + 1, elapsed
    return steps, time.monotonic() - start


@torch.no_grad()
def evaluate(model, tokenizer, seed: int, n: int, batch_size: int = 50) -> dict[str, dict]:
    """Greedy replies to `n` held-out cases per task: the task check and the exact reference reply."""
    model.eval()
    stop_ids = model.generation_config.eos_token_id
    pad_id = model.generation_config.pad_token_id
    results = {}
    for task, generate_cases in tasks.GENERATORS.items():
        cases = generate_cases(seed, n)
        passed = exact = 0
        failures = []
        by_kind: dict[str, list[int]] = {}  # recall: name kind -> [passed, total]
        for first in range(0, len(cases), batch_size):
            chunk = cases[first: first + batch_size]
            prompts = [encode(tokenizer, case, with_answer=False)[0] for case in chunk]
            width = max(len(ids) for ids in prompts)
            input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in prompts])
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts])
            output = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=32,
                                    do_sample=False, eos_token_id=stop_ids, pad_token_id=pad_id)
            for case, row in zip(chunk, output[:, width:].tolist(), strict=True):
                ends = [i for i, token in enumerate(row) if token in stop_ids]
                row = row[: ends[0] + 1] if ends else row
                raw = tokenizer.decode(row, skip_special_tokens=False)
                reply = tokenizer.decode(row, skip_special_tokens=True).strip()
                ok = tasks.check(case, reply)
                passed += ok
                exact += raw == "\n" + case["answer"] + END_OF_TURN
                if "name_kind" in case:
                    counts = by_kind.setdefault(case["name_kind"], [0, 0])
                    counts[0] += ok
                    counts[1] += 1
                if not ok and len(failures) < 3:
                    failures.append((case["messages"][-1]["content"], reply))
        results[task] = {"accuracy": passed / len(cases), "exact": exact / len(cases), "failures": failures,
                         "by_kind": {kind: ok / total for kind, (ok, total) in sorted(by_kind.items())}}
    return results


def cpu_seconds() -> float:
    """User + system CPU time of this process so far, all its threads together."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE, help="checkpoint folder (default: this folder)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop training early past this many minutes (the result then depends on speed)")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch CPU threads")
    parser.add_argument("--eval-cases", type=int, default=EVAL_CASES)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.use_deterministic_algorithms(True)
    wall = time.monotonic()

    tokenizer = build_tokenizer()
    check_name_tokens(tokenizer)
    tokenizer.chat_template = glm4_chat_template()
    model = make_model(tokenizer)
    params = sum(p.numel() for p in model.parameters())
    print(f"vocab {len(tokenizer)} (padded {model.config.vocab_size}), {params / 1e6:.2f}M parameters",
          flush=True)

    steps, train_seconds = train(model, tokenizer, args.steps, args.minutes)
    train_cpu = cpu_seconds()
    results = evaluate(model, tokenizer, tasks.HELD_OUT_SEED, args.eval_cases)

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    total = time.monotonic() - wall
    print(f"\ntrained {steps} steps in {train_seconds / 60:.1f} min ({total / 60:.1f} min in all), "
          f"{params / 1e6:.2f}M parameters, saved to {args.out}")
    print(f"CPU time: {train_cpu / 60:.1f} CPU-minutes up to the end of training, "
          f"{cpu_seconds() / 60:.1f} in all (all threads, user + system)")
    print(f"held-out accuracy (seed {tasks.HELD_OUT_SEED}, {args.eval_cases} cases per task, greedy):")
    for task, result in results.items():
        print(f"  {task:9s} {result['accuracy']:.1%}  (exact reference reply {result['exact']:.1%})")
        for kind, accuracy in result["by_kind"].items():
            print(f"      {kind} names: {accuracy:.1%}")
        for question, reply in result["failures"]:
            print(f"      {question!r} -> {reply!r}")


if __name__ == "__main__":
    main()
