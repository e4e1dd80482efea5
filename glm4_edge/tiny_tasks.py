"""Synthetic chat tasks that the embedded tiny GLM-4 (models/glm4-tiny-chat) is trained and checked on.

Pure Python (no torch), so tests and benchmarks can import it. Every generator takes a `seed`
and a count `n` and returns the same cases for the same arguments on every machine:

    addition_cases(seed, n)  "What is 23+45?"      -> "23+45=68."          expected "68"
                             "23加45等于多少？"       -> "23加45等于68。"      expected "68"
    recall_cases(seed, n)    "My name is Lumeri." ... "What is my name?" -> "Your name is Lumeri."
                             "我叫Lumeri。" ... "我叫什么名字？"          -> "你叫Lumeri。"
    greeting_cases(seed, n)  "Hello!" -> "Hello! How can I help you?"
                             "你好"    -> "你好！有什么可以帮你的吗？"

A case is `{"task", "messages", "answer", "expected"}`: `messages` is the conversation so far
and ends with the user turn to answer, `answer` is the reference reply and `expected` the part
of it that `check(case, reply)` looks for. Training used the seeds `TRAIN_SEEDS`; held-out
evaluation uses `HELD_OUT_SEED`, which training never saw.

Names are Latin names spelt from the whole alphabet (`Lumeri`, `Wyqen`, `Xq`) or Chinese names of 2-3
characters (`李雷`, `王芳`), each in a prompt of either language. One name in ten
(`is_held_out_name`) is kept out of training: cases from a training seed never use one, cases
from any other seed (`HELD_OUT_SEED`) use only those, so held-out recall asks for names that
training never showed.
"""

from __future__ import annotations

import random
import re
import string
import zlib

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

# Latin names: mostly consonant-vowel syllables (pronounceable, few tokens: train.py's tokenizer
# learns every such pair), some short strings of any letters, so that every letter of the
# alphabet appears in names, capitalised first and lower case after it.
_CONSONANTS = "bcdfghjklmnpqrstvwxz"
_VOWELS = "aeiouy"
_LATIN_SHARE = 0.75  # the rest are Chinese names
_ANY_LETTERS_SHARE = 0.3  # Latin names of 2-4 letters drawn from the whole alphabet
_CLOSED_SHARE = 0.25  # syllable names closed by a consonant: Tesan
# Chinese names: a common surname and one or two given-name characters. The surnames are the 30
# most common without 高 and 于 (the task phrases use them) and 吴 and 韩; 吴 韩 and the given-name
# characters 浩 秀 玉 辉 春 健 are left out because the tokenizer's phrase merges cut them into byte
# pieces next to other name characters. The rest are one token each (train.py checks it).
SURNAMES = "李王张刘陈杨赵黄周徐孙胡朱林何郭马罗梁宋郑谢唐冯董程曹袁"
GIVEN_NAME_CHARACTERS = "雷芳伟娜敏静丽强磊军洋勇艳杰娟涛明超霞平刚桂英华兰萍红建文力晶燕鹏斌宇凯俊帆鑫波宁欣婷雪琳"
HELD_OUT_NAME_SHARE = 10  # one name in this many is held out of training
_SYSTEM_PROBABILITY = 0.2


def _rng(task: str, seed: int) -> random.Random:
    return random.Random(f"glm4-tiny-chat/{task}/{seed}")  # str seeds are stable across runs


def is_held_out_name(name: str) -> bool:
    """Whether `name` is kept for evaluation: CRC-32 of its UTF-8 bytes divisible by HELD_OUT_NAME_SHARE."""
    return zlib.crc32(name.encode()) % HELD_OUT_NAME_SHARE == 0


def latin_name(rng: random.Random) -> str:
    """A capitalised Latin name: 2-3 consonant-vowel syllables, sometimes closed by a consonant
    (`Lumeri`, `Wyqen`), or 2-4 letters from the whole alphabet (`Xq`, `Jtzo`)."""
    if rng.random() < _ANY_LETTERS_SHARE:
        name = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 4)))
    else:
        name = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(rng.choice((2, 3))))
        if rng.random() < _CLOSED_SHARE:
            name += rng.choice(_CONSONANTS)
    return name.capitalize()


def syllables() -> list[str]:
    """Every consonant-vowel pair a Latin name is built of, lower case and capitalised (ba, Ba, ...)."""
    pairs = [c + v for c in _CONSONANTS for v in _VOWELS]
    return pairs + [pair.capitalize() for pair in pairs]


def chinese_name(rng: random.Random) -> str:
    """A surname and one or two given-name characters: 李雷, 王芳, 陈静英."""
    return rng.choice(SURNAMES) + "".join(rng.choice(GIVEN_NAME_CHARACTERS) for _ in range(rng.choice((1, 2))))


def random_name(rng: random.Random, held_out: bool = False) -> tuple[str, str]:
    """A (name, kind) pair, kind "latin" or "chinese"; held out of training or not (`is_held_out_name`)."""
    kind = "latin" if rng.random() < _LATIN_SHARE else "chinese"
    make = latin_name if kind == "latin" else chinese_name
    while True:
        name = make(rng)
        if is_held_out_name(name) == held_out:
            return name, kind


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
    """Name stated in an early turn, 0-2 other turns (either language), then asked for.

    A case also has "name_kind" ("latin" or "chinese"). Seeds in TRAIN_SEEDS draw names that are
    not held out, any other seed only held-out names.
    """
    rng = _rng("recall", seed)
    cases = []
    for _ in range(n):
        lang = rng.choice(("en", "zh"))
        name, kind = random_name(rng, held_out=seed not in TRAIN_SEEDS)
        messages = _start(rng, lang)
        messages += [{"role": "user", "content": NAME_STATEMENT[lang].format(name=name)},
                     {"role": "assistant", "content": NAME_ACK[lang].format(name=name)}]
        for _ in range(rng.choice((0, 1, 2))):
            turn = rng.choice((_addition_turn, _greeting_turn))
            question, answer, _ = turn(rng, rng.choice(("en", "zh")))
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        turn = (NAME_QUESTION[lang], NAME_ANSWER[lang].format(name=name), name)
        cases.append({**_case("recall", messages, turn), "name_kind": kind})
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
    """The fixed phrases of every task, without names or numbers, and each Chinese name character
    on a line of its own (one token each, never merged with its neighbours), for the tokenizer's BPE."""
    lines = [*SYSTEM_PROMPTS.values()]
    for questions, answer, _ in GREETINGS.values():
        lines += [*questions, answer]
    for table in (NAME_STATEMENT, NAME_ACK, NAME_QUESTION, NAME_ANSWER):
        lines += [text.replace("{name}", "") for text in table.values()]
    for table in (ADDITION_QUESTION, ADDITION_ANSWER):
        lines += [re.sub(r"\{\w\}", "", text) for text in table.values()]
    return lines + list(SURNAMES + GIVEN_NAME_CHARACTERS)
