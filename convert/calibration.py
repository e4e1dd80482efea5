"""Offline calibration data for data-aware compression (AWQ, scale estimation): no dataset download.

The built-in set is bilingual chat, rendered through the GLM-4 prompt so that the activations NNCF
sees look like the ones the model meets at inference.
"""

from __future__ import annotations

import json
from pathlib import Path

from glm4_edge.errors import Glm4EdgeError
from glm4_edge.glm_format import render_prompt

DEFAULT_NUM_SAMPLES = 64
MAX_SAMPLE_TOKENS = 256

BUILTIN_CHATS = [
    ("What is the capital of France, and why is it famous?",
     "The capital of France is Paris. It is famous for the Eiffel Tower, the Louvre and its cafés."),
    ("请用三句话介绍一下长城。",
     "长城是中国古代的军事防御工程。它绵延一万多公里。如今它是世界著名的旅游景点。"),
    ("Write a Python function that returns the n-th Fibonacci number.",
     "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a"),
    ("什么是机器学习？", "机器学习是人工智能的一个分支，让计算机从数据中学习规律，而不是依靠明确编写的规则。"),
    ("Summarize the benefits of regular exercise.",
     "Regular exercise strengthens the heart, improves mood, helps control weight and improves sleep."),
    ("把这句话翻译成英文：今天天气很好，我们去公园散步吧。",
     "The weather is nice today, let's take a walk in the park."),
    ("Explain the difference between TCP and UDP in simple terms.",
     "TCP is reliable and ordered: it checks that every packet arrives. UDP is faster but gives no guarantee."),
    ("如何在家里做一碗西红柿鸡蛋面？",
     "先把西红柿切块，鸡蛋打散炒熟；再炒西红柿出汁，加水烧开，下面条，最后放入鸡蛋和盐即可。"),
    ("What is 17 multiplied by 23? Show your work.", "17 x 23 = 17 x 20 + 17 x 3 = 340 + 51 = 391."),
    ("给我推荐三本适合初学者的编程书。",
     "《Python编程：从入门到实践》、《笨办法学Python》和《代码大全》都很适合初学者。"),
    ("Give me three tips for writing a good email.",
     "Keep the subject specific, put the request in the first lines, and end with a clear next step."),
    ("解释一下什么是光合作用。", "光合作用是植物利用光能，把二氧化碳和水转化为葡萄糖和氧气的过程。"),
    ("Tell me a short story about a robot who learns to paint.",
     "Unit 7 swept the gallery floor every night. One evening it picked up a dropped brush, and by dawn the "
     "wall held a sunrise no human had painted."),
    ("比较一下太阳能和风能的优缺点。",
     "太阳能安装灵活、维护少，但受天气和昼夜影响；风能发电效率高，但对选址要求高，还有噪音问题。"),
    ("Convert 100 degrees Fahrenheit to Celsius.", "(100 - 32) x 5/9 = 37.8 degrees Celsius."),
    ("用JSON格式列出三种水果和它们的颜色。",
     '{"苹果": "红色", "香蕉": "黄色", "葡萄": "紫色"}'),
]


def builtin_texts() -> list[str]:
    texts = []
    for user, answer in BUILTIN_CHATS:
        texts.append(render_prompt([{"role": "user", "content": user}]) + "\n" + answer)
    for (user_a, answer_a), (user_b, answer_b) in zip(BUILTIN_CHATS[::2], BUILTIN_CHATS[1::2], strict=False):
        messages = [{"role": "system", "content": "You are a helpful assistant. 你是一个乐于助人的助手。"},
                    {"role": "user", "content": user_a}, {"role": "assistant", "content": answer_a},
                    {"role": "user", "content": user_b}]
        texts.append(render_prompt(messages) + "\n" + answer_b)
    return texts


def load_texts(dataset: str) -> list[str]:
    """'builtin', a .txt file (blank-line separated samples) or a .jsonl file ("text" or "messages")."""
    if dataset == "builtin":
        return builtin_texts()
    path = Path(dataset)
    if not path.is_file():
        raise Glm4EdgeError(f"--dataset {dataset}: no such file; use 'builtin', a .txt or a .jsonl file")
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        texts = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise Glm4EdgeError(f"--dataset {path}:{number} is not valid JSON") from None
            if isinstance(record, dict) and isinstance(record.get("messages"), list):
                texts.append(render_prompt(record["messages"], generation_prefix=""))
            elif isinstance(record, dict) and isinstance(record.get("text"), str):
                texts.append(record["text"])
            else:
                raise Glm4EdgeError(f"--dataset {path}:{number} needs a 'text' or 'messages' field")
    else:
        texts = [block.strip() for block in raw.split("\n\n") if block.strip()]
    if not texts:
        raise Glm4EdgeError(f"--dataset {path} holds no text")
    return texts


def token_samples(tokenizer, dataset: str, num_samples: int = DEFAULT_NUM_SAMPLES) -> list[list[int]]:
    samples = []
    for text in load_texts(dataset)[:num_samples]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:MAX_SAMPLE_TOKENS]
        if len(ids) >= 4:
            samples.append(ids)
    if not samples:
        raise Glm4EdgeError(f"--dataset {dataset} gave no sample of at least 4 tokens")
    return samples


def nncf_dataset(model, samples: list[list[int]]):
    """Prefill inputs for the stateful OpenVINO LLM (NNCF resets the KV state between samples)."""
    import nncf
    import numpy as np

    names = {port.get_any_name() for port in model.inputs}

    def transform(ids: list[int]) -> dict:
        length = len(ids)
        inputs = {"input_ids": np.array([ids], dtype=np.int64),
                  "attention_mask": np.ones((1, length), dtype=np.int64)}
        if "position_ids" in names:
            inputs["position_ids"] = np.arange(length, dtype=np.int64)[None]
        if "beam_idx" in names:
            inputs["beam_idx"] = np.zeros((1,), dtype=np.int32)
        return inputs

    return nncf.Dataset(samples, transform)
