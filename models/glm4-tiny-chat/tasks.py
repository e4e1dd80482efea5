"""Synthetic chat tasks that the tiny GLM-4 model in this folder is trained and checked on.

Pure Python (no torch), so tests and benchmarks can import it. Every generator takes a `seed`
and a count `n` and returns the same cases for the same arguments on every machine:

    addition_cases(seed, n)  "What is 23+45?"      -> "23+45=68."          expected "68"
                             "23加45等于多少？"       -> "23加45等于68。"      expected "68"
    recall_cases(seed, n)    "My name is Kavo." ... "What is my name?" -> "Your name is Kavo."
                             "我叫Kavo。" ... "我叫什么名字？"          -> "你叫Kavo。"
    greeting_cases(seed, n)  "Hello!" -> "Hello! How can I help you?"
                             "你好"    -> "你好！有什么可以帮你的吗？"

A case is `{"task", "messages", "answer", "expected"}`: `messages` is the conversation so far
and ends with the user turn to answer, `answer` is the reference reply and `expected` the part
of it that `check(case, reply)` looks for. Training used the seeds `TRAIN_SEEDS`; held-out
evaluation uses `HELD_OUT_SEED`, which training never saw. Names are random syllable strings,
so a held-out recall case almost always asks for a name the model has never seen.
"""

from __future__ import annotations

import random
import re

TRAIN_SEEDS = range(0, 10_000)  # train.py draws training batch k from seed k
HELD_OUT_SEED = 12345

SYSTEM_PROMPTS = {"en": "You are a helpful assistant.", "zh": "你是一个有用的助手。"}
GREETINGS = {
    "en": (["Hello!", "Hello", "Hi!", "Hi", "Hey!"], "Hello! How can I help you?", "How can I help you?"),
    "zh": (["你好", "你好！", "您好", "您好！", "嗨！"], "你好！有什么可以帮你的吗？",
           "有什么可以帮你的吗？"),
}
NAME_STATEMENT = {"en": "My name is {name}.", "zh": "我叫{name}。"}
NAME_ACK = {"en": "Nice to meet you, {name}.", "zh": "很高兴认识你，{name}。"}
NAME_QUESTION = {"en": "What is my name?", "zh": "我叫什么名字？"}
NAME_ANSWER = {"en": "Your name is {name}.", "zh": "你叫{name}。"}
ADDITION_QUESTION = {"en": "What is {a}+{b}?", "zh": "{a}加{b}等于多少？"}
ADDITION_ANSWER = {"en": "{a}+{b}={s}.", "zh": "{a}加{b}等于{s}。"}

_ONSETS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_SYSTEM_PROBABILITY = 0.2


def _rng(task: str, seed: int) -> random.Random:
    return random.Random(f"glm4-tiny-chat/{task}/{seed}")  # str seeds are stable across runs


def random_name(rng: random.Random) -> str:
    """Two or three consonant-vowel syllables, sometimes closed by an n: Kavo, Lumeri, Tesan."""
    syllables = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.choice((2, 3)))]
    if rng.random() < 0.25:
        syllables[-1] += "n"
    return "".join(syllables).capitalize()


def _addition_turn(rng: random.Random, lang: str) -> tuple[str, str, str]:
    a, b = rng.randrange(100), rng.randrange(100)
    return (ADDITION_QUESTION[lang].format(a=a, b=b), ADDITION_ANSWER[lang].format(a=a, b=b, s=a + b),
            str(a + b))


def _greeting_turn(rng: random.Random, lang: str) -> tuple[str, str, str]:
    questions, answer, expected = GREETINGS[lang]
    return rng.choice(questions), answer, expected


def _start(rng: random.Random, lang: str) -> list[dict]:
    if rng.random() < _SYSTEM_PROBABILITY:
        return [{"role": "system", "content": SYSTEM_PROMPTS[lang]}]
    return []


def _case(task: str, messages: list[dict], turn: tuple[str, str, str]) -> dict:
    question, answer, expected = turn
    messages = [*messages, {"role": "user", "content": question}]
    return {"task": task, "messages": messages, "answer": answer, "expected": expected}


def addition_cases(seed: int, n: int) -> list[dict]:
    rng = _rng("addition", seed)
    cases = []
    for _ in range(n):
        lang = rng.choice(("en", "zh"))
        cases.append(_case("addition", _start(rng, lang), _addition_turn(rng, lang)))
    return cases


def greeting_cases(seed: int, n: int) -> list[dict]:
    rng = _rng("greeting", seed)
    cases = []
    for _ in range(n):
        lang = rng.choice(("en", "zh"))
        cases.append(_case("greeting", _start(rng, lang), _greeting_turn(rng, lang)))
    return cases


def recall_cases(seed: int, n: int) -> list[dict]:
    """Name stated in an early turn, 0-2 other turns (either language), then asked for."""
    rng = _rng("recall", seed)
    cases = []
    for _ in range(n):
        lang = rng.choice(("en", "zh"))
        name = random_name(rng)
        messages = _start(rng, lang)
        messages += [{"role": "user", "content": NAME_STATEMENT[lang].format(name=name)},
                     {"role": "assistant", "content": NAME_ACK[lang].format(name=name)}]
        for _ in range(rng.choice((0, 1, 2))):
            turn = rng.choice((_addition_turn, _greeting_turn))
            question, answer, _ = turn(rng, rng.choice(("en", "zh")))
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        turn = (NAME_QUESTION[lang], NAME_ANSWER[lang].format(name=name), name)
        cases.append(_case("recall", messages, turn))
    return cases


GENERATORS = {"addition": addition_cases, "recall": recall_cases, "greeting": greeting_cases}


def check(case: dict, reply: str) -> bool:
    """Whether `reply` answers `case`: the sum is the last number of an addition reply,
    otherwise the expected text appears in the reply."""
    if case["task"] == "addition":
        numbers = re.findall(r"\d+", reply)
        return bool(numbers) and numbers[-1] == case["expected"]
    return case["expected"] in reply


def corpus_lines() -> list[str]:
    """The fixed phrases of every task, without names or numbers, for the tokenizer's BPE."""
    lines = [*SYSTEM_PROMPTS.values()]
    for questions, answer, _ in GREETINGS.values():
        lines += [*questions, answer]
    for table in (NAME_STATEMENT, NAME_ACK, NAME_QUESTION, NAME_ANSWER):
        lines += [text.replace("{name}", "") for text in table.values()]
    for table in (ADDITION_QUESTION, ADDITION_ANSWER):
        lines += [re.sub(r"\{\w\}", "", text) for text in table.values()]
    return lines
