"""`VisionModel`: GLM-4V-9B (image + text chat) driven with `ov.Core` directly.

openvino-genai's VLMPipeline has no GLM-4V model type, so this module runs the three IRs that
`glm4-edge convert` writes for a GLM-4V checkpoint (see `images.VISION_FILES`) itself: the vision
encoder once per image (features cached by content hash, so later turns do not re-encode), the
token embedding, the image features spliced over the `<|begin_of_image|><|endoftext|><|end_of_image|>`
placeholder, position ids as THUDM's reference assigns them (`images.image_position_ids`), and a
stateful decode loop with `sampling.Sampler`. Streaming, stop strings, reasoning and tool-call
parsing, `Chunk`/`Reply`/`GenerationStats` are the text models'.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import glm_format, images, prompting
from .errors import BadParameterError, ContextOverflowError, Glm4EdgeError, ModelFormatError
from .fallback import StaticShape, StaticShapeError
from .loading import LoadPlan, openvino_reason
from .model import Chunk, GenerationStats, Model, _tool_plan, peak_rss_bytes
from .options import GenerationOptions, finish_reason
from .sampling import Sampler

DEFAULT_FEATURE_CACHE_IMAGES = 4  # glm-4v-9b: 1602 x 4096 float32 = 26 MB per image
# What the GLM-4V decode loop cannot do yet, and what to do instead: refused by name, never ignored.
VISION_CANNOT_HONOUR = {
    "json_schema": "structured output is not available for GLM-4V models yet; ask for JSON in the prompt",
}


class VisionModel(Model):
    """A converted GLM-4V model on one OpenVINO device: `stream`/`generate`/`chat` take an image.

    An image (a path, bytes, a `data:` URL or a PIL image) comes as `stream(..., image=...)` (it joins
    the first user turn), as a user message's `"image"` key (THUDM's own convention), or as an
    OpenAI `image_url`/`image` content part. One image per conversation (the model was trained so).
    """

    def __init__(self, plan: LoadPlan, core, compiled: dict[str, Any], tokenizer, load_s: float,
                 context_length: int, generation_prefix: str, stop_token_ids: list[int]):
        manifest = plan.manifest
        self.path = plan.folder
        self.device = plan.device
        self.pipeline = None  # no openvino_genai pipeline: see the module docstring
        self.tokenizer = tokenizer
        self.manifest = manifest
        self.load_s = load_s
        self.context_length = context_length
        self.generation_prefix = generation_prefix
        self.stop_token_ids = stop_token_ids
        self._lock = threading.Lock()
        self.assisted = None
        self.kv_cache_precision = ""
        self.prefill_threshold = 0
        reasoning = bool(manifest and manifest.reasoning) or self.starts_in_reasoning
        self.prompt_format = prompting.prompt_format(tokenizer, self.family, reasoning)
        self.vision = dict(manifest.vision) if manifest else {}
        self._core = core
        # On the NPU the language model runs through NPUW's LLM mode: static prefill and generate shapes,
        # no beam_idx, and every prefill starts a fresh KV cache (so no prefix reuse across turns).
        self.static_shape = (StaticShape(int(plan.properties["MAX_PROMPT_LEN"]),
                                         int(plan.properties["MIN_RESPONSE_LEN"]))
                             if plan.base_device == "NPU" else None)
        self._feeds_beam_idx = any("beam_idx" in port.get_names() for port in compiled["language"].inputs)
        self._compiled_language = compiled["language"]
        self._language = compiled["language"].create_infer_request()
        self._embeddings = compiled["embeddings"].create_infer_request()
        self._encoder = compiled["encoder"].create_infer_request()
        self._features: OrderedDict[str, np.ndarray] = OrderedDict()
        # What the language model's KV cache holds: (prompt ids as tokenized, unexpanded, plus the answer
        # tokens fed back; the image's digest or None) and its length in positions. A request whose ids
        # extend it (the next turn of the same chat) prefills only the new tokens.
        self._cached: tuple[list[int], str | None] | None = None
        self._kv_length = 0
        self.last_prefill_tokens = 0  # tokens the last request prefilled (less than its prompt on a cache hit)
        self.last_prefill_logits: np.ndarray | None = None  # [vocab]: what the last prefill predicted next
        self._user_id = self._special_id("<|user|>")
        self._newline_id = prompting.encode(tokenizer, "\n")

    accepts_images = True

    def _special_id(self, token: str) -> int:
        ids = prompting.encode(self.tokenizer, token)
        if len(ids) != 1:
            raise ModelFormatError(f"{self.path}: the tokenizer has no {token} token; reconvert the model")
        return ids[0]

    # --- the public calls -------------------------------------------------------------------------

    def stream(self, messages: str | Sequence[dict], *, image: Any = None, tools: Sequence[dict] | None = None,
               tool_choice: Any = None, json_schema: str | None = None, cancel: threading.Event | None = None,
               **options: Any) -> Iterator[Chunk]:
        """`Model.stream` with an optional image (see the class docstring).

        Raises BadParameterError (param "image") for a bad image, a second image in the conversation
        or an image on a non-user turn; `json_schema` and forced tool calls are refused by name.
        """
        checked = GenerationOptions.of(options)
        if json_schema is not None:
            raise BadParameterError(f"GLM-4V cannot honour json_schema: {VISION_CANNOT_HONOUR['json_schema']}",
                                    "json_schema")
        shown, forced = _tool_plan(tools, tool_choice, None)
        if forced is not None:
            raise BadParameterError("GLM-4V cannot force a tool call (it needs structured output); use "
                                    "tool_choice 'auto'", "tool_choice")
        plain, source, turn = split_image(messages, image, legacy=self.prompt_format == glm_format.GLM4_9B_CHAT)
        prompt = self.render(plain, shown)
        picture = images.open_image(source) if source is not None else None
        ids = self.encode(prompt)
        if picture is not None:
            ids = self._with_placeholder(ids, turn)
        return self._checked(ids, picture, checked, [s["name"] for s in shown], cancel, parse=True)

    def stream_prompt(self, prompt: str, *, parse: bool = True, tool_names: Sequence[str] = (),
                      json_schema: str | None = None, cancel: threading.Event | None = None,
                      **options: Any) -> Iterator[Chunk]:
        """A prompt already rendered (text only)."""
        checked = GenerationOptions.of(options)
        if json_schema is not None:
            raise BadParameterError(f"GLM-4V cannot honour json_schema: {VISION_CANNOT_HONOUR['json_schema']}",
                                    "json_schema")
        return self._checked(self.encode(prompt), None, checked, list(tool_names), cancel, parse=parse)

    def image_tokens_in(self, messages: Any) -> int:
        """Positions the conversation's image takes beyond its rendered text (the feature tokens), or 0."""
        _, source, _ = split_image(messages, None, legacy=self.prompt_format == glm_format.GLM4_9B_CHAT)
        return int(self.vision["feature_tokens"]) if source is not None else 0

    def generate_batch(self, conversations, **options: Any):
        raise BadParameterError("GLM-4V models answer one conversation at a time; call generate for each",
                                "conversations")

    def warm_up(self) -> None:
        for _ in self.stream("hi", max_new_tokens=2, temperature=0.0):
            pass

    # --- prompt -------------------------------------------------------------------------------------

    def _with_placeholder(self, ids: list[int], turn: int) -> list[int]:
        """`ids` with boi, <|endoftext|>, eoi after the `turn`-th user turn's `<|user|>\\n` (the reference's place)."""
        tags = [index for index, token in enumerate(ids) if token == self._user_id]
        if turn >= len(tags):
            raise ModelFormatError("the rendered prompt lacks the user turn that carries the image")
        at = tags[turn] + 1
        if ids[at:at + len(self._newline_id)] == self._newline_id:
            at += len(self._newline_id)
        v = self.vision
        return ids[:at] + [v["boi_token_id"], v["placeholder_token_id"], v["eoi_token_id"]] + ids[at:]

    def prompt_inputs(self, ids: list[int], picture=None) -> tuple[np.ndarray, np.ndarray, float | None]:
        """(inputs_embeds [1, L, hidden] f32, position_ids [L] i64, vision-encoder seconds or None if none ran).

        With a picture, L = len(ids) - 3 + feature_tokens; the image features replace the placeholder.
        """
        embeds = self._embed(ids)
        if picture is None:
            return embeds, np.arange(len(ids), dtype=np.int64), None
        features, seconds = self.image_features(picture)
        boi = ids.index(self.vision["boi_token_id"])
        spliced = np.concatenate([embeds[:, :boi], features.astype(embeds.dtype), embeds[:, boi + 3:]], axis=1)
        return spliced, images.image_position_ids(len(ids), boi, int(self.vision["image_tokens"])), seconds

    def image_features(self, picture) -> tuple[np.ndarray, float | None]:
        """(features [1, feature_tokens, hidden], encoder seconds; None when the cache answered)."""
        digest = images.image_digest(picture)
        if digest in self._features:
            self._features.move_to_end(digest)
            return self._features[digest], None
        pixels = images.preprocess(picture, int(self.vision["image_size"]), self.vision.get("mean", images.CLIP_MEAN),
                                   self.vision.get("std", images.CLIP_STD))
        started = time.perf_counter()
        self._encoder.infer({"pixel_values": pixels})
        features = np.array(self._encoder.get_tensor("image_features").data, dtype=np.float32)
        seconds = time.perf_counter() - started
        self._features[digest] = features
        while len(self._features) > DEFAULT_FEATURE_CACHE_IMAGES:
            self._features.popitem(last=False)
        return features, seconds

    def _embed(self, ids: list[int]) -> np.ndarray:
        self._embeddings.infer({"input_ids": np.asarray([ids], dtype=np.int64)})
        return np.array(self._embeddings.get_output_tensor(0).data, dtype=np.float32)

    # --- decoding -----------------------------------------------------------------------------------

    def forward(self, embeds: np.ndarray, positions: np.ndarray, total: int) -> np.ndarray:
        """One step of the stateful language model: logits [rows, vocab] (rows: what the IR returns)."""
        self._cached = None  # the cache now holds what the caller fed, which this object no longer knows
        request = self._language
        request.set_tensor("inputs_embeds", _tensor(embeds.astype(np.float32)))
        request.set_tensor("attention_mask", _tensor(np.ones((1, total), dtype=np.int64)))
        request.set_tensor("position_ids", _tensor(np.asarray(positions, dtype=np.int64)[None]))
        if self._feeds_beam_idx:
            request.set_tensor("beam_idx", _tensor(np.zeros(1, dtype=np.int32)))
        try:
            request.infer()
        except RuntimeError as error:  # one line for the user, as for a load failure; never a traceback
            raise Glm4EdgeError(f"OpenVINO failed while generating on {self.device}: {openvino_reason(error)}") \
                from None
        return np.array(request.get_tensor("logits").data[0], dtype=np.float32)

    def reset(self) -> None:
        """Empty the KV cache; the next request prefills its whole conversation."""
        if self.static_shape is None:
            self._language.reset_state()
        else:
            # NPUW tells a prefill from a generate step by the first position id it ever saw on a request
            # (npuw/llm_infer_request.cpp, `m_first_position_id`); with `npu_position_offset` an image prompt
            # starts at another position than a text one, so each conversation gets a request of its own.
            self._language = None  # freed before the next one allocates its static KV cache
            self._language = self._compiled_language.create_infer_request()
        self._cached = None

    def _checked(self, ids: list[int], picture, options: GenerationOptions, tool_names: list[str],
                 cancel: threading.Event | None, parse: bool) -> Iterator[Chunk]:
        prompt_tokens = len(ids) + (int(self.vision["feature_tokens"]) - 3 if picture is not None else 0)
        if self.static_shape is not None:
            misfit = self.static_shape.misfit(prompt_tokens, options.max_new_tokens)
            if misfit:
                raise StaticShapeError(misfit, prompt_tokens, options.max_new_tokens, self.static_shape,
                                       fallback=False)
        if self.context_length and prompt_tokens + options.max_new_tokens > self.context_length:
            raise ContextOverflowError(prompt_tokens, options.max_new_tokens, self.context_length)
        return self._decode(ids, picture, options, tool_names, cancel, parse)

    def _decode(self, ids: list[int], picture, options: GenerationOptions, tool_names: list[str],
                cancel: threading.Event | None, parse: bool) -> Iterator[Chunk]:
        matcher = glm_format.StopMatcher(options.stop)
        parser = glm_format.ReplyParser(tool_names=tool_names, in_reasoning=self.starts_in_reasoning)
        stops = set(self.stop_token_ids)
        with self._lock:
            started = time.perf_counter()
            digest = images.image_digest(picture) if picture is not None else None
            cached, self._cached = self._cached, None  # unknown until this prefill succeeds
            vision_s = None
            if cached is not None and cached[1] == digest and len(ids) > len(cached[0]) \
                    and ids[:len(cached[0])] == cached[0] and self.static_shape is None:
                # After the image, a token's position is its unexpanded index: the suffix continues from there.
                embeds = self._embed(ids[len(cached[0]):])
                positions = np.arange(len(cached[0]), len(ids), dtype=np.int64)
                total = self._kv_length + embeds.shape[1]
            else:
                embeds, positions, vision_s = self.prompt_inputs(ids, picture)
                self.reset()
                total = embeds.shape[1]
                if self.static_shape is not None:
                    positions = positions + npu_position_offset(positions, total)
            prompt_tokens = total
            self.last_prefill_tokens = embeds.shape[1]
            prefill_started = time.perf_counter()
            logits = self.last_prefill_logits = self.forward(embeds, positions, total)[-1]
            first_at = time.perf_counter()
            forwarded = list(ids)
            self._cached, self._kv_length = (forwarded, digest), total
            next_position = int(positions[-1]) + 1
            sampler = Sampler(options, ids)
            generated: list[int] = []
            shown = ""
            cancelled = False
            ended: str | None = None
            try:
                while True:
                    token = sampler(logits)
                    generated.append(token)
                    if token in stops and not options.ignore_eos:
                        ended = "stop"
                        break
                    text = self.tokenizer.decode(generated, skip_special_tokens=True)
                    if not text.endswith("\ufffd") and len(text) > len(shown):  # hold a split UTF-8 character
                        raw, shown = text[len(shown):], text
                        visible = matcher.feed(raw)
                        piece = parser.feed(visible) if parse else glm_format.ParsedPiece(text=visible)
                        if piece.text or piece.reasoning:
                            yield Chunk(text=piece.text, reasoning=piece.reasoning)
                    if matcher.stopped:
                        break
                    if cancel is not None and cancel.is_set():
                        cancelled = True
                        break
                    if len(generated) >= options.max_new_tokens:
                        ended = "length"
                        break
                    self._cached = None
                    logits = self.forward(self._embed([token]), np.asarray([next_position]), total + 1)[-1]
                    total += 1
                    forwarded.append(token)
                    self._cached, self._kv_length = (forwarded, digest), total
                    next_position += 1
            finally:
                finished_at = time.perf_counter()
            tail, calls = glm_format.finish_answer(matcher, parser if parse else None)
            stats = GenerationStats(prompt_tokens=prompt_tokens, generated_tokens=len(generated),
                                    ttft_s=first_at - started, total_s=finished_at - started, load_s=self.load_s,
                                    device=self.device, peak_memory_bytes=peak_rss_bytes(),
                                    vision_encoder_s=vision_s)
            stats.prefill_tokens_per_s = self.last_prefill_tokens / max(first_at - prefill_started, 1e-9)
            if len(generated) > 1:
                stats.tokens_per_s = (len(generated) - 1) / max(finished_at - first_at, 1e-9)
            reason = finish_reason(cancelled=cancelled, tool_calls=bool(calls), stop_string=matcher.stopped,
                                   ended=ended, last_token=generated[-1] if generated else None,
                                   stop_token_ids=self.stop_token_ids, generated=len(generated),
                                   max_new_tokens=options.max_new_tokens)
            yield Chunk(text=tail.text, reasoning=tail.reasoning, finish_reason=reason,
                        tool_calls=[c.as_dict() for c in calls] or None, stats=stats)


def _tensor(array: np.ndarray):
    import openvino as ov

    return ov.Tensor(np.ascontiguousarray(array))


def split_image(messages: str | Sequence[dict], image: Any = None, legacy: bool = True
                ) -> tuple[list[dict], Any, int]:
    """(messages without image parts, the conversation's image source or None, its user turn's index).

    The index counts the user turns the prompt renders (the legacy template skips empty ones).
    Raises BadParameterError for two images, an image outside a user turn, or an image turn without text.
    """
    listed = [{"role": "user", "content": messages}] if isinstance(messages, str) else list(messages or [])
    plain: list[dict] = []
    found: list[tuple[int, Any]] = []
    for index, message in enumerate(listed):
        if not isinstance(message, dict):
            plain.append(message)  # normalize_messages says what is wrong with it
            continue
        message = dict(message)
        sources = []
        if message.get("image") is not None:
            sources.append(message.pop("image"))
        message.pop("image", None)
        content = message.get("content")
        if isinstance(content, list):
            kept = []
            for part in content:
                if isinstance(part, dict) and part.get("type") in images.IMAGE_PART_TYPES:
                    sources.append(_part_source(part))
                else:
                    kept.append(part)
            message["content"] = kept
        if sources and message.get("role") != "user":
            raise BadParameterError(f"messages[{index}] is a {message.get('role')} turn with an image; images go in "
                                    "a user turn", "image")
        found += [(index, source) for source in sources]
        plain.append(message)
    if image is not None:
        users = [i for i, m in enumerate(plain) if isinstance(m, dict) and m.get("role") == "user"]
        if not users:
            raise BadParameterError("an image needs a user turn to go with", "image")
        found.insert(0, (users[0], image))
    if len(found) > 1:
        raise BadParameterError("GLM-4V takes one image per conversation; start a new conversation for another "
                                "image", "image")
    if not found:
        return plain, None, 0
    at, source = found[0]
    if not _text_of(plain[at]).strip():
        raise BadParameterError("an image needs a question or instruction with it in the same turn", "image")
    turn = sum(1 for m in plain[:at] if isinstance(m, dict) and m.get("role") == "user"
               and (not legacy or _text_of(m)))
    return plain, source, turn


def _text_of(message: dict) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def _part_source(part: dict) -> Any:
    value = part.get(part["type"])
    if isinstance(value, dict):
        value = value.get("url")
    if value is None:
        raise BadParameterError(f"an {part['type']} content part has no image (expected a data: URL)", "image")
    return value


def load_vision(plan: LoadPlan, warm_up: bool = False) -> VisionModel:
    """Compile the three IRs of a GLM-4V folder on `plan.device` (CPU or GPU) and open its tokenizer."""
    import openvino as ov
    import openvino_genai

    from .loading import model_facts

    if plan.manifest is None or not plan.manifest.vision:
        raise ModelFormatError(f"{plan.folder} has GLM-4V files but no glm4-edge manifest describing them; "
                               "reconvert it with `glm4-edge convert`")
    config = {k: v for k, v in plan.properties.items() if isinstance(v, (str, int, float, bool))}
    devices_for, configs = _npu_placement(plan, config) if plan.base_device == "NPU" else (
        dict.fromkeys(("language", "embeddings", "encoder"), plan.device), dict.fromkeys(
            ("language", "embeddings", "encoder"), config))
    core = ov.Core()
    started = time.perf_counter()
    compiled = {}
    try:
        language = core.read_model(str(Path(plan.folder) / images.LANGUAGE_MODEL_XML))
        if plan.base_device != "NPU":  # NPUW splits the lm_head off itself and returns the last logits
            language = last_token_logits(language)
        compiled["language"] = core.compile_model(language, devices_for["language"], configs["language"])
        for key, name in (("embeddings", images.TEXT_EMBEDDINGS_XML), ("encoder", images.VISION_ENCODER_XML)):
            compiled[key] = core.compile_model(str(Path(plan.folder) / name), devices_for[key], configs[key])
        tokenizer = openvino_genai.Tokenizer(str(plan.folder))
    except RuntimeError as error:
        raise Glm4EdgeError(f"OpenVINO could not load {plan.folder} on {plan.device}: {openvino_reason(error)}") \
            from None
    load_s = time.perf_counter() - started
    facts = model_facts(plan, _TokenizerOnly(tokenizer))
    model = VisionModel(plan, core, compiled, tokenizer, load_s, *facts)
    if warm_up:
        model.warm_up()
    return model


def npu_position_offset(positions: np.ndarray, total: int) -> int:
    """What to add to every position id of a prompt of `total` KV entries so that its last one is total - 1.

    NPUW's generate step reads the new token's position id as the count of KV entries to keep
    (`trim_kvcache_for_speculative_decoding` in openvino's npuw/llm_infer_request.cpp), which holds for
    text but not after a GLM-4V image, whose 1600 tokens share one position: the cache would be cut back
    by ~1600 entries at the first generated token. RoPE depends only on position differences, so one
    constant offset for the whole sequence leaves every attention score, and the logits, as they were
    (up to rounding), and makes each position id equal its KV slot from the end of the prompt on.
    """
    return int(total - 1 - positions[-1])


def _npu_placement(plan: LoadPlan, config: dict[str, Any]) -> tuple[dict[str, str], dict[str, dict]]:
    """(device, compile config) per IR on the NPU, as openvino-genai places a VLM there.

    The language model goes through NPUW's LLM mode with the static MAX_PROMPT_LEN/MIN_RESPONSE_LEN
    (the properties openvino-genai's `compile_decoder_for_npu` sets; KV cache axes batch 0, sequence 2
    as optimum exports GLM); the vision encoder has a static 1x3xSxS input and compiles for the NPU as
    it is; the token embedding lookup (a Gather over a prompt of any length) runs on the CPU, where
    openvino-genai puts it on AUTO.
    """
    from .devices import npu_on_cpu

    common = {k: v for k, v in config.items() if k not in ("MAX_PROMPT_LEN", "MIN_RESPONSE_LEN")}
    language = {**common, "NPU_USE_NPUW": "YES", "NPUW_LLM": "YES", "NPUW_LLM_BATCH_DIM": 0,
                "NPUW_LLM_SEQ_LEN_DIM": 2, "NPUW_LLM_MAX_PROMPT_LEN": int(config["MAX_PROMPT_LEN"]),
                "NPUW_LLM_MIN_RESPONSE_LEN": int(config["MIN_RESPONSE_LEN"])}
    encoder = {**common, "NPU_USE_NPUW": "YES"} if npu_on_cpu(config) else common
    embeddings = {k: v for k, v in common.items() if not k.startswith(("NPU", "CACHE_DIR"))}
    return ({"language": "NPU", "encoder": "NPU", "embeddings": "CPU"},
            {"language": language, "encoder": encoder, "embeddings": embeddings})


def last_token_logits(model):
    """`model` computing logits for the last position only (as openvino-genai does for its LLMs).

    The lm_head over a whole GLM-4V prefill (~1600 image tokens x 151552 vocabulary) would cost about
    1 GB of float32 logits and a trillion multiply-adds that are thrown away. The hidden state is
    sliced before the final MatMul; a graph of another shape is returned unchanged.
    """
    import openvino.opset13 as ops

    node = model.output("logits").get_node().input_value(0).get_node()
    while node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    if node.get_type_name() != "MatMul":
        return model
    last = ops.slice(node.input_value(0), np.array([-1]), np.array([np.iinfo(np.int64).max]), np.array([1]),
                     np.array([1]))
    node.input(0).replace_source_output(last.output(0))
    model.validate_nodes_and_infer_types()
    return model


class _TokenizerOnly:
    """What `model_facts` asks of a pipeline, for a folder whose manifest answers the rest."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def get_tokenizer(self):
        return self._tokenizer
