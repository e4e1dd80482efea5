"""Build GLM-4 checkpoints locally: tiny ones for tests, GLM-4-9B-shaped ones for benchmarks.

There is no hub access on test machines, so every family's layout is written here from
transformers' own configs with random weights, plus a small byte-level BPE tokenizer that has
the GLM-4 special tokens and chat template. `write_legacy_chatglm` re-saves a `glm` model in
the legacy `chatglm` layout (fused QKV, tiktoken `tokenizer.model`) to test the remap.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from glm4_edge.glm_format import SPECIAL_TOKENS, STOP_TOKENS

# The pre-tokenizer split GLM-4's tiktoken tokenizer uses.
GLM4_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LEGACY_EXTRA_SPECIALS = ("<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>")

CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{%- if tools -%}<|system|>\n# 可用工具\n"
    "{%- for tool in tools %}{%- set function = tool.function if tool.function is defined else tool %}"
    "\n\n## {{ function.name }}\n\n{{ function | tojson(indent=4) }}\n"
    "在调用上述函数时，请使用 Json 格式表示调用的参数。"
    "{%- endfor %}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'system' -%}<|system|>\n{{ message.content }}"
    "{%- elif message.role == 'user' -%}<|user|>\n{{ message.content }}"
    "{%- elif message.role == 'assistant' -%}"
    "{%- set content = message.content if message.content is string else '' -%}"
    "<|assistant|>\n{% if '</think>' in content %}{{ content.split('</think>')[-1].lstrip() }}"
    "{% else %}{{ content }}{% endif -%}"
    "{%- elif message.role == 'tool' or message.role == 'observation' -%}<|observation|>\n{{ message.content }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{{ generation_suffix }}{%- endif -%}"
)

BASE_CORPUS = [
    "Hello! How can I help you today?",
    "What is 23+45? 23+45 is 68.",
    "My name is Kavo. What is my name? Your name is Kavo.",
    "The weather in Beijing is sunny and warm today.",
    "OpenVINO runs GLM-4 on Intel CPUs, GPUs and NPUs.",
    "def add(a, b):\n    return a + b\n",
    "你好！有什么可以帮你的吗？",
    "23加45等于多少？等于68。",
    "今天北京的天气晴朗，温度二十五度。",
    "我叫小明。我的名字是什么？你的名字是小明。",
    "<think>Let me think step by step.</think>The answer is 42.",
    '{"city": "Beijing", "unit": "celsius"}',
    "get_weather\n{\"city\": \"Beijing\"}",
]


@dataclass(frozen=True)
class Shape:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int | None = None  # None: the tokenizer's size rounded up to 64


TINY = Shape(128, 256, 2, 4, 2, 32)
WEIGHT_STATISTICS = ("gaussian", "realistic")
WEIGHT_STD = 0.08  # wider than the usual 0.02 init so that greedy outputs vary with the input
STUDENT_T_DOF = 4  # even: sampled exactly from uniforms, see realistic_weights_
OUTLIER_CHANNEL_SHARE = 0.01
OUTLIER_CHANNEL_GAIN = 4.0
GLM4_9B = Shape(4096, 13696, 40, 32, 2, 128, 151552)


def corpus(extra: Iterable[str] = ()) -> list[str]:
    rng = random.Random(0)
    lines = list(BASE_CORPUS) + list(extra)
    for _ in range(200):
        a, b = rng.randrange(100), rng.randrange(100)
        lines.append(f"What is {a}+{b}? {a}+{b} is {a + b}.")
        lines.append(f"{a}加{b}等于多少？等于{a + b}。")
    return lines


def build_tokenizer(vocab_size: int = 1000, extra_corpus: Iterable[str] = ()):
    """A byte-level BPE with GLM-4's split pattern; the special tokens follow the merged vocab."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GLM4_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(corpus(extra_corpus), trainer)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]), clean_up_tokenization_spaces=False,
    )
    fast.padding_side = "left"
    return fast


def chat_template(reasoning: bool = False) -> str:
    suffix = "\n<think>" if reasoning else ""
    return CHAT_TEMPLATE.replace("{{ generation_suffix }}", suffix)


def build_checkpoint(folder: Path, family: str = "glm4", shape: Shape = TINY, seed: int = 0,
                     reasoning: bool = False, dtype: str = "float32", tokenizer=None,
                     template: str | None = None, weights: str = "gaussian") -> Path:
    """Write a random-weight `glm4` or `glm` checkpoint (config, safetensors, tokenizer) to `folder`.

    `template` replaces the stand-in chat template (e.g. with a published one, to test that the
    runtime follows the checkpoint's own template). `weights` is one of WEIGHT_STATISTICS:
    "gaussian" (every matrix N(0, 0.08)) or "realistic" (heavy tails and outlier input channels, see
    `realistic_weights_`). Raises ValueError otherwise.
    """
    if weights not in WEIGHT_STATISTICS:
        raise ValueError(f"weights {weights!r} is not one of {', '.join(WEIGHT_STATISTICS)}")
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Glm4Config, GlmConfig

    folder = Path(folder)
    tokenizer = tokenizer or build_tokenizer()
    tokenizer.chat_template = template or chat_template(reasoning)
    stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS]
    vocab_size = shape.vocab_size or (len(tokenizer) + 63) // 64 * 64
    config_class = {"glm4": Glm4Config, "glm": GlmConfig}[family]
    config = config_class(
        vocab_size=vocab_size, hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers, num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads, head_dim=shape.head_dim, max_position_embeddings=4096,
        rms_norm_eps=1e-5, pad_token_id=stop_ids[0], eos_token_id=stop_ids, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    torch_dtype = getattr(torch, dtype)
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        hidden_outliers = torch.randperm(shape.hidden_size, generator=generator)[
            :max(1, round(OUTLIER_CHANNEL_SHARE * shape.hidden_size))]
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2 and weights == "realistic":
                realistic_weights_(parameter, WEIGHT_STD, generator,
                                   hidden_outliers if parameter.shape[1] == shape.hidden_size else None)
            elif parameter.dim() == 2:
                parameter.normal_(0.0, WEIGHT_STD)
            elif "norm" not in name:
                parameter.normal_(0.0, 0.02)
    model.generation_config = GenerationConfig(eos_token_id=stop_ids, pad_token_id=stop_ids[0],
                                               do_sample=False)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def realistic_weights_(parameter, std: float, generator, outlier_columns=None) -> None:
    """Fill a [out, in] matrix in place with LLM-like statistics: Student's t tails, outlier input channels.

    Trained LLM weights are heavier-tailed than a Gaussian: Dotzel et al., "Learning from Students:
    Applying t-Distributions to Explore Accurate and Efficient Formats for LLMs" (ICML 2024) fit the
    weights (and activations) of 30 LLMs and found Student's t a better fit than the normal
    distribution; STUDENT_T_DOF = 4 is a heavy-tailed member of that family (kurtosis undefined: the
    4th moment diverges), i.e. a pessimistic but not extreme choice. They also carry outlier *input
    channels*: LLM.int8() (Dettmers et al., NeurIPS 2022) found a handful of hidden dimensions with
    magnitudes up to 20x the rest in every layer of models above 6.7B parameters, SpQR (Dettmers et al.,
    2023) found weight outliers clustering in input-feature columns, and AWQ (Lin et al., MLSys 2024)
    protects the 0.1-1% of input channels that matter most. Here OUTLIER_CHANNEL_SHARE (1%) of the
    input columns, the same hidden dimensions in every matrix that reads the hidden state, are scaled
    by OUTLIER_CHANNEL_GAIN (4x). Without the outlier columns the matrix has standard deviation `std`.
    Filled in row chunks so that the 151552-row embedding needs no full-size float32 temporaries.
    """
    import torch

    rows, columns = parameter.shape
    scale = std / (STUDENT_T_DOF / (STUDENT_T_DOF - 2)) ** 0.5
    if outlier_columns is None:
        count = max(1, round(OUTLIER_CHANNEL_SHARE * columns))
        outlier_columns = torch.randperm(columns, generator=generator)[:count]
    gain = torch.ones(columns)
    gain[outlier_columns] = OUTLIER_CHANNEL_GAIN
    chunk = max(1, (1 << 24) // columns)
    for start in range(0, rows, chunk):
        shape = (min(rows, start + chunk) - start, columns)
        # t = Z / sqrt(V / dof) with V ~ chi-squared(dof); for even dof, V = -2 ln(U_1 ... U_{dof/2}).
        uniforms = torch.ones(shape)
        for _ in range(STUDENT_T_DOF // 2):
            uniforms *= torch.rand(shape, generator=generator).clamp_min_(1e-12)
        t = torch.randn(shape, generator=generator) / (-2.0 * uniforms.log_() / STUDENT_T_DOF).sqrt_()
        parameter[start:start + shape[0]] = (t * scale * gain).to(parameter.dtype)


def write_legacy_chatglm(glm_folder: Path, out_folder: Path) -> Path:
    """Re-save a `glm` checkpoint as legacy `chatglm` (what THUDM/glm-4-9b-chat ships)."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    glm_folder, out_folder = Path(glm_folder), Path(out_folder)
    out_folder.mkdir(parents=True, exist_ok=True)
    config = json.loads((glm_folder / "config.json").read_text())
    state = {}
    for file in sorted(glm_folder.glob("*.safetensors")):
        state.update(load_file(file))
    legacy = {}
    for name, tensor in state.items():
        if name == "lm_head.weight":
            legacy["transformer.output_layer.weight"] = tensor
            continue
        new = name.replace("model.embed_tokens.", "transformer.embedding.word_embeddings.")
        new = new.replace("model.norm.", "transformer.encoder.final_layernorm.")
        new = new.replace("model.layers.", "transformer.encoder.layers.")
        new = new.replace(".self_attn.o_proj.", ".self_attention.dense.")
        new = new.replace(".mlp.gate_up_proj.", ".mlp.dense_h_to_4h.").replace(".mlp.down_proj.", ".mlp.dense_4h_to_h.")
        if ".self_attn.q_proj." in name:
            prefix = new.split(".self_attn.")[0]
            kind = name.rsplit(".", 1)[1]
            parts = [state[name], state[name.replace("q_proj", "k_proj")], state[name.replace("q_proj", "v_proj")]]
            legacy[f"{prefix}.self_attention.query_key_value.{kind}"] = torch.cat(parts, 0)
            continue
        if ".self_attn.k_proj." in name or ".self_attn.v_proj." in name:
            continue
        legacy[new] = tensor
    save_file({k: v.contiguous() for k, v in legacy.items()}, out_folder / "model.safetensors",
              metadata={"format": "pt"})
    rope = config.get("rope_parameters") or {}
    rope_theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    legacy_config = {
        "_name_or_path": "THUDM/glm-4-9b-chat",
        "model_type": "chatglm",
        "architectures": ["ChatGLMModel"],
        "auto_map": {
            "AutoConfig": "configuration_chatglm.ChatGLMConfig",
            "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
            "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration",
        },
        "add_bias_linear": False,
        "add_qkv_bias": True,
        "apply_query_key_layer_scaling": True,
        "apply_residual_connection_post_layernorm": False,
        "attention_softmax_in_fp32": True,
        "ffn_hidden_size": config["intermediate_size"],
        "hidden_size": config["hidden_size"],
        "kv_channels": config["head_dim"],
        "layernorm_epsilon": config["rms_norm_eps"],
        "multi_query_attention": True,
        "multi_query_group_num": config["num_key_value_heads"],
        "num_attention_heads": config["num_attention_heads"],
        "num_layers": config["num_hidden_layers"],
        "num_hidden_layers": config["num_hidden_layers"],
        "padded_vocab_size": config["vocab_size"],
        "post_layer_norm": True,
        "rmsnorm": True,
        "rope_ratio": rope_theta / 10000.0,
        "original_rope": True,
        "seq_length": config.get("max_position_embeddings", 4096),
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"],
    }
    (out_folder / "config.json").write_text(json.dumps(legacy_config, indent=2))
    generation = glm_folder / "generation_config.json"
    if generation.exists():
        (out_folder / "generation_config.json").write_text(generation.read_text())

    # tokenizer.model: one "base64(bytes) rank" line per mergeable token, specials implied after them.
    tokenizer = AutoTokenizer.from_pretrained(glm_folder)
    byte_decoder = _byte_decoder()
    lines = []
    for token, rank in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        if token in SPECIAL_TOKENS:
            continue
        raw = bytes(byte_decoder[ch] for ch in token)
        lines.append(f"{base64.b64encode(raw).decode()} {rank}")
    (out_folder / "tokenizer.model").write_text("\n".join(lines) + "\n")
    (out_folder / "tokenizer_config.json").write_text(json.dumps({
        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLM4Tokenizer", None]},
        "tokenizer_class": "ChatGLM4Tokenizer",
        "chat_template": tokenizer.chat_template,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 128000,
        "padding_side": "left",
        "remove_space": False,
        "clean_up_tokenization_spaces": False,
    }, indent=2, ensure_ascii=False))
    return out_folder


def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes-to-unicode table that byte-level BPE vocabularies use."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


def build_scripted_checkpoint(folder: Path, pieces: list[str | bytes], end: str | None = "<|user|>",
                              loop: bool = False, family: str = "glm4", reasoning: bool = False,
                              start: str = "<|assistant|>", template: str | None = None) -> Path:
    """A checkpoint whose greedy answer is always `pieces`: deterministic output for end-to-end tests.

    Every layer's output projection is zero, so the logits depend on the last token alone, and
    lm_head maps each token of the script to the next one. A str piece becomes a token of its own
    (added if the vocabulary lacks it); a bytes piece of one byte is that raw byte-level token, which
    is how a test gets a Chinese character split across tokens. Pieces must be distinct tokens.
    With `loop`, the script repeats forever (for cancellation tests); else it ends with `end`.
    `start` is the prompt's last token (`<think>` when the template opens the think block).
    """
    import torch
    from safetensors.torch import load_file, save_file

    tokenizer = build_tokenizer()
    vocab = tokenizer.get_vocab()
    new_tokens = [p for p in [*pieces, start] if isinstance(p, str) and p not in vocab]
    tokenizer.add_tokens(new_tokens)
    byte_to_char = {byte: char for char, byte in _byte_decoder().items()}
    ids = []
    for piece in pieces:
        if isinstance(piece, bytes):
            if len(piece) != 1:
                raise ValueError("bytes pieces must be single bytes")
            ids.append(tokenizer.convert_tokens_to_ids(byte_to_char[piece[0]]))
        else:
            ids.append(tokenizer.convert_tokens_to_ids(piece))
    chain = [tokenizer.convert_tokens_to_ids(start)] + ids
    if not loop and end:
        chain.append(tokenizer.convert_tokens_to_ids(end))
    if len(set(chain)) != len(chain):
        raise ValueError("scripted pieces must be distinct tokens")
    folder = build_checkpoint(folder, family, TINY, reasoning=reasoning, tokenizer=tokenizer, template=template)
    weights = folder / "model.safetensors"
    state = load_file(weights)
    embed = state["model.embed_tokens.weight"]
    generator = torch.Generator().manual_seed(1)
    embed.copy_(torch.randn(embed.shape, generator=generator))
    for name in state:
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            state[name].zero_()
        if "norm" in name:
            state[name].fill_(1.0)
    head = state["lm_head.weight"]
    head.zero_()
    successors = list(zip(chain, chain[1:], strict=False))
    if loop:
        successors.append((chain[-1], chain[1]))
    for current, following in successors:
        head[following] = embed[current] * (4.0 / embed.shape[1] ** 0.5)
    save_file(state, weights, metadata={"format": "pt"})
    return folder
