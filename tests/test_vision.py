"""GLM-4V-9B: a tiny random checkpoint in the real layout, converted and run, against our PyTorch reference.

The checkpoint (`convert.vision_synthetic`) has fp16-representable weights, so the fp16 conversion
stores them exactly and the converted model must match the float32 reference to arithmetic noise.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import glm4_edge
from glm4_edge import images
from glm4_edge.errors import BadParameterError, Glm4EdgeError, ModelFormatError

F32 = {"INFERENCE_PRECISION_HINT": "f32"}
# Measured on the tiny model (fp16 IR, f32 inference): features 1.5e-7, logits 5.5e-4 on logits of
# magnitude ~3.5; the limits leave a margin and are far below what a wrong position rule gives (> 0.05).
FEATURE_TOLERANCE = 1e-4
LOGIT_TOLERANCE = 3e-3


@pytest.fixture(scope="module")
def checkpoint(glm4v_checkpoint) -> Path:
    return glm4v_checkpoint  # session-wide (conftest): the UI tests use the same tiny model


@pytest.fixture(scope="module")
def converted(glm4v_model) -> Path:
    return glm4v_model


@pytest.fixture(scope="module")
def model(converted):
    return glm4_edge.load(converted, properties=F32)


@pytest.fixture(scope="module")
def reference(checkpoint):
    from glm4_edge.convert import families
    from glm4_edge.convert.vision_reference import ReferenceModel

    staged = checkpoint.parent / "staged"
    staged.mkdir()
    families.remap_legacy(families.detect_family(checkpoint), staged)
    return ReferenceModel(checkpoint, staged)


def full_logits(converted: Path, embeds: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Logits for every position, straight from the language IR (the runtime computes the last one only)."""
    import openvino as ov

    request = ov.Core().compile_model(converted / images.LANGUAGE_MODEL_XML, "CPU", F32).create_infer_request()
    request.reset_state()
    return request.infer({"inputs_embeds": embeds, "position_ids": positions[None],
                          "attention_mask": np.ones((1, embeds.shape[1]), dtype=np.int64),
                          "beam_idx": np.zeros(1, dtype=np.int32)})["logits"][0]


def picture(seed: int = 0, size: tuple[int, int] = (150, 200)):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def prompt_ids(model, text: str, image=None) -> tuple[list[int], object]:
    from glm4_edge.vision import split_image

    plain, source, turn = split_image(text, image)
    ids = model.encode(model.render(plain))
    if source is None:
        return ids, None
    return model._with_placeholder(ids, turn), images.open_image(source)


# --- checkpoint and conversion ----------------------------------------------------------------------

def test_checkpoint_has_the_real_layout(checkpoint):
    from glm4_edge.convert.families import detect_family, legacy_tokenizer
    from safetensors import safe_open

    config = json.loads((checkpoint / "config.json").read_text())
    assert config["model_type"] == "chatglm" and "vision_config" in config
    with safe_open(str(checkpoint / "model-00002-of-00002.safetensors"), framework="pt") as handle:
        names = set(handle.keys())
    assert all(name.startswith("transformer.vision.") for name in names)
    assert {"transformer.vision.boi", "transformer.vision.conv.weight",
            "transformer.vision.transformer.layers.1.attention.query_key_value.weight"} <= names
    tokenizer = legacy_tokenizer(checkpoint)
    assert tokenizer.convert_tokens_to_ids("<|begin_of_image|>") == config["boi_token_id"]
    assert tokenizer.convert_tokens_to_ids("<|end_of_image|>") == config["eoi_token_id"]
    assert detect_family(checkpoint).vision


def test_glm41v_is_refused_with_a_clear_message(tmp_path):
    from glm4_edge.convert.families import detect_family

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "glm4v", "vision_config": {}}))
    with pytest.raises(ModelFormatError, match="GLM-4.1V"):
        detect_family(tmp_path)


def test_converted_folder_holds_three_irs_and_the_prompt_facts(converted):
    import openvino as ov

    assert not (converted / "openvino_model.xml").exists()
    manifest = json.loads((converted / "glm4_edge.json").read_text())
    vision = manifest["vision"]
    assert vision["image_size"] == 112 and vision["image_tokens"] == 16 and vision["feature_tokens"] == 18
    assert vision["position_ids"] == "shared" and vision["mean"] == list(images.CLIP_MEAN)
    core = ov.Core()
    encoder = core.read_model(converted / images.VISION_ENCODER_XML)
    assert list(encoder.input(0).get_partial_shape().to_shape()) == [1, 3, 112, 112]
    assert list(encoder.output(0).get_partial_shape().to_shape()) == [1, 18, 128]
    language = core.read_model(converted / images.LANGUAGE_MODEL_XML)
    assert {port.get_any_name() for port in language.inputs} == {"inputs_embeds", "attention_mask", "position_ids",
                                                                  "beam_idx"}
    assert core.read_model(converted / images.TEXT_EMBEDDINGS_XML).input(0).get_any_name() == "input_ids"


# --- numerics against the PyTorch reference -----------------------------------------------------------

def test_image_features_match_the_reference(model, reference):
    image = images.open_image(picture())
    features, seconds = model.image_features(image)
    expected = reference.image_features(images.preprocess(image, 112)).numpy()
    assert features.shape == expected.shape == (1, 18, 128)
    assert np.abs(features - expected).max() < FEATURE_TOLERANCE
    assert model.image_features(image)[1] is None  # the second time comes from the cache


def test_logits_for_image_and_text_match_the_reference(model, reference, converted):
    ids, image = prompt_ids(model, "What is in this picture?", picture())
    embeds, positions, _ = model.prompt_inputs(ids, image)
    logits = full_logits(converted, embeds, positions)
    expected = reference.logits(ids, images.preprocess(image, 112)).numpy()
    assert logits.shape == expected.shape == (len(ids) - 3 + 18, expected.shape[1])
    assert np.abs(logits - expected).max() < LOGIT_TOLERANCE
    model.reset()
    last = model.forward(embeds, positions, embeds.shape[1])  # the runtime's graph: the last position only
    assert last.shape == (1, expected.shape[1]) and np.abs(last[0] - expected[-1]).max() < LOGIT_TOLERANCE
    # The position rule matters: plain sequential positions (vLLM's port) give other logits.
    sequential = full_logits(converted, embeds, np.arange(embeds.shape[1]))
    assert np.abs(sequential - expected).max() > 20 * LOGIT_TOLERANCE


def test_stateful_decode_equals_full_recomputation(model, reference, converted):
    ids, image = prompt_ids(model, "Describe the image.", picture(1))
    embeds, positions, _ = model.prompt_inputs(ids, image)
    model.reset()
    total = embeds.shape[1]
    step_logits = [model.forward(embeds, positions, total)[-1]]
    tokens = []
    next_position = len(ids)
    for _ in range(5):
        tokens.append(int(np.argmax(step_logits[-1])))
        total += 1
        step_logits.append(model.forward(model._embed([tokens[-1]]), np.asarray([next_position]), total)[-1])
        next_position += 1
    full_ids = ids + tokens
    full_embeds, full_positions, _ = model.prompt_inputs(full_ids, image)
    assert list(full_positions[-6:]) == list(range(len(ids) - 1, len(ids) + 5))  # decode continues unexpanded
    full = full_logits(converted, full_embeds, full_positions)[-6:]
    assert np.abs(np.stack(step_logits) - full).max() < 1e-3
    expected = reference.logits(full_ids, images.preprocess(image, 112)).numpy()[-6:]
    assert np.abs(np.stack(step_logits) - expected).max() < LOGIT_TOLERANCE


def test_text_only_turn_matches_the_reference(model, reference, converted):
    ids, _ = prompt_ids(model, "Hello! What is 23+45?")
    embeds, positions, seconds = model.prompt_inputs(ids)
    assert seconds is None
    expected = reference.logits(ids).numpy()
    assert np.abs(full_logits(converted, embeds, positions) - expected).max() < LOGIT_TOLERANCE
    model.reset()
    assert np.abs(model.forward(embeds, positions, embeds.shape[1])[0] - expected[-1]).max() < LOGIT_TOLERANCE


# --- preprocessing and positions -------------------------------------------------------------------------

def test_preprocessing_of_a_solid_colour_is_the_hand_computed_value():
    from PIL import Image

    pixels = images.preprocess(Image.new("RGB", (37, 53), (200, 100, 50)), 112)
    assert pixels.shape == (1, 3, 112, 112) and pixels.dtype == np.float32
    for channel, value in enumerate((200, 100, 50)):
        expected = (value / 255 - images.CLIP_MEAN[channel]) / images.CLIP_STD[channel]
        np.testing.assert_allclose(pixels[0, channel], expected, rtol=0, atol=1e-6)


def test_preprocessing_equals_the_reference_torchvision_pipeline():
    from torchvision import transforms

    image = picture(2, (97, 131))
    reference = transforms.Compose([
        transforms.Resize((112, 112), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(images.CLIP_MEAN, images.CLIP_STD),
    ])(image).numpy()[None]
    np.testing.assert_allclose(images.preprocess(image, 112), reference, rtol=0, atol=1e-6)


def test_position_ids_follow_the_reference_rule():
    from glm4_edge.convert.vision_reference import reference_position_ids

    # boi at 2 in a 7-token prompt, 4 image tokens: boi keeps 2, all image tokens share 3, eoi and the rest
    # keep their unexpanded positions.
    assert list(images.image_position_ids(7, 2, 4)) == [0, 1, 2, 3, 3, 3, 3, 4, 5, 6]
    for length, boi, tokens in ((7, 2, 4), (30, 5, 1600), (12, 0, 16)):
        ids = list(range(100, 100 + length))
        ids[boi], ids[boi + 1], ids[boi + 2] = 1, 2, 3
        expected = reference_position_ids(ids, 1, 3, tokens)[0].numpy()
        np.testing.assert_array_equal(images.image_position_ids(length, boi, tokens), expected)


def test_placeholder_sits_after_the_user_tag(model):
    ids, _ = prompt_ids(model, "Hi there", picture())
    v = model.vision
    at = ids.index(v["boi_token_id"])
    assert ids[at:at + 3] == [v["boi_token_id"], v["placeholder_token_id"], v["eoi_token_id"]]
    assert ids[at - 2] == model._user_id and ids[at - 1:at] == model._newline_id


# --- the public API ------------------------------------------------------------------------------------

def test_generate_takes_an_image_as_path_bytes_or_pil(model, tmp_path):
    image = picture(3)
    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes(image))
    replies = [model.generate("What is this?", image=source, max_new_tokens=6, temperature=0)
               for source in (image, path, str(path), path.read_bytes())]
    assert len({reply.text for reply in replies}) == 1
    assert all(reply.stats.generated_tokens >= 1 for reply in replies)
    assert replies[0].stats.prompt_tokens > 18
    plain = model.generate("What is this?", max_new_tokens=6, temperature=0)
    assert plain.stats.vision_encoder_s is None and plain.stats.prompt_tokens < replies[0].stats.prompt_tokens


def test_chat_encodes_the_image_once_and_refuses_a_second(model):
    chat = model.chat(max_new_tokens=4, temperature=0)
    first = list(chat.send("What is in the picture?", image=picture(4)))[-1].stats
    assert first.vision_encoder_s is not None and first.vision_encoder_s > 0
    assert "vision" in first.summary()
    second = list(chat.send("And the colours?"))[-1].stats
    assert second.vision_encoder_s is None  # the features came from the cache
    assert second.prompt_tokens > first.prompt_tokens
    with pytest.raises(BadParameterError, match="one image per conversation"):
        chat.send("Now this one", image=picture(5))
    assert chat.messages[-1]["role"] == "assistant"  # the refused turn was not kept


def test_openai_image_url_part(model):
    import base64

    url = "data:image/png;base64," + base64.b64encode(png_bytes(picture(3))).decode()
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                             {"type": "image_url", "image_url": {"url": url}}]}]
    by_part = model.generate(messages, max_new_tokens=6, temperature=0)
    by_argument = model.generate("What is this?", image=picture(3), max_new_tokens=6, temperature=0)
    assert by_part.text == by_argument.text


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries almost no pixel data (a decompression-bomb shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("case", ["text", "truncated", "empty", "huge", "missing", "folder", "remote", "type"])
def test_bad_images_get_one_line_errors(model, tmp_path, case):
    sources = {
        "text": b"this is not an image at all",
        "truncated": png_bytes(picture(6))[:2000],
        "empty": tmp_path / "empty.png",
        "huge": png_header_only(20000, 20000),
        "missing": tmp_path / "nope.png",
        "folder": tmp_path,
        "remote": "https://example.com/cat.png",
        "type": 42,
    }
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(Glm4EdgeError) as caught:
        model.generate("What is this?", image=sources[case], max_new_tokens=2)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 300
    assert {"empty": "0 bytes", "huge": "megapixel limit", "truncated": "truncated", "remote": "not fetched",
            "text": "not an image"}.get(case, "") in message


def test_image_bound_is_read_from_the_header(tmp_path):
    with pytest.raises(BadParameterError, match="3000x3000 pixels, over the 1 megapixel limit") as caught:
        images.open_image(png_header_only(3000, 3000), max_pixels=1_000_000)
    assert "truncated" not in str(caught.value) and "could not be decoded" not in str(caught.value)
    # Above the default 50 MP but under Pillow's own bomb limit: the same one line, not a decode failure.
    with pytest.raises(BadParameterError) as caught:
        images.open_image(png_header_only(8000, 8000))
    assert str(caught.value).startswith("the image data is 8000x8000 pixels") or "8000x8000 pixels, over" in str(
        caught.value)
    assert "truncated" not in str(caught.value)


def test_image_to_a_text_only_model_is_refused(tiny_int4):
    text_model = glm4_edge.load(tiny_int4)
    with pytest.raises(BadParameterError, match="text-only model"):
        text_model.generate("What is this?", image=picture())
    with pytest.raises(BadParameterError, match="text-only model"):
        list(text_model.chat().send("What is this?", image=picture()))


def test_int4_models_get_an_int8_vision_encoder(checkpoint, tmp_path):
    """The default (int4) conversion compresses the vision tower to INT8 (the language model's INT4 path is
    the legacy glm-4-9b-chat one, tested in test_convert)."""
    from glm4_edge.convert.export import bits_table
    from glm4_edge.convert.vision_export import convert_vision_tower

    assert convert_vision_tower(checkpoint, tmp_path, "int4") == "int8"
    table = {row["precision"]: row["percent"] for row in bits_table(tmp_path / images.VISION_ENCODER_XML)}
    assert table.get("int8_asym", 0) > 90


# --- CLI ------------------------------------------------------------------------------------------------

def test_cli_generate_and_chat_take_an_image(converted, model, tmp_path):
    import subprocess

    from .conftest import CLI

    path = tmp_path / "photo.png"
    path.write_bytes(png_bytes(picture(3)))
    result = subprocess.run([*CLI, "generate", str(converted), "-p", "What is this?", "--image", str(path), "--json",
                             "--temperature", "0", "--max-new-tokens", "6"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    expected = model.generate("What is this?", image=path, max_new_tokens=6, temperature=0)
    assert reply["text"] == expected.text and reply["stats"]["vision_encoder_s"] is not None
    session = subprocess.run([*CLI, "chat", str(converted), "--temperature", "0", "--max-new-tokens", "3"],
                             input=f"/image {path}\nWhat is this?\n/image {path}\nAnd again?\n", capture_output=True,
                             text=True, timeout=120)
    assert session.returncode == 0, session.stderr
    said = " ".join(session.stderr.split())  # rich wraps lines off a terminal
    assert "one image per conversation" in said and "/clear starts" in said
    assert said.count("attached") == 1, said  # the second /image is refused as it is typed
    info = subprocess.run([*CLI, "info", str(converted)], capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and "112x112, 16 image tokens" in info.stdout
    run = subprocess.run([*CLI, "run", str(converted), "--image", str(path), "--max-new-tokens", "2"],
                         input="What is this?\n", capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "vision" in run.stderr, run.stderr


def test_cli_bad_image_is_one_line_before_loading(converted, tmp_path):
    import subprocess

    from .conftest import CLI

    (tmp_path / "empty.png").write_bytes(b"")
    result = subprocess.run([*CLI, "generate", str(converted), "-p", "hi", "--image", str(tmp_path / "empty.png")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "0 bytes" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_conversion_refuses_a_checkpoint_without_its_vision_tensors_before_exporting(checkpoint, tmp_path):
    import shutil

    from glm4_edge.convert.export import ConvertOptions, convert

    broken = tmp_path / "no-vision-shard"
    shutil.copytree(checkpoint, broken)
    (broken / "model-00002-of-00002.safetensors").unlink()
    (broken / "model.safetensors.index.json").unlink()
    with pytest.raises(ModelFormatError, match="no transformer.vision"):
        convert(ConvertOptions(source=str(broken), output=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_length_cancel_stop_and_seeded_sampling(model):
    import threading

    image = picture(7)
    reply = model.generate("What is this?", image=image, max_new_tokens=5, temperature=0, ignore_eos=True)
    assert reply.finish_reason == "length" and reply.stats.generated_tokens == 5
    cancel = threading.Event()
    cancel.set()
    chunks = list(model.stream("What is this?", image=image, max_new_tokens=20, cancel=cancel, ignore_eos=True))
    assert chunks[-1].finish_reason == "cancelled" and chunks[-1].stats.generated_tokens == 1
    seeded = [model.generate("What is this?", image=image, max_new_tokens=8, temperature=1.0, seed=7,
                             ignore_eos=True).text for _ in range(2)]
    assert seeded[0] == seeded[1]
    greedy = model.generate("What is this?", image=image, max_new_tokens=8, temperature=0, ignore_eos=True).text
    assert len(greedy) > 2
    stop = greedy[1:3]
    cut = model.generate("What is this?", image=image, max_new_tokens=8, temperature=0, ignore_eos=True, stop=[stop])
    assert cut.finish_reason == "stop" and stop not in cut.text and greedy.startswith(cut.text)
    with pytest.raises(BadParameterError, match="json_schema"):
        model.generate("What is this?", image=image, json_schema='{"type": "object"}')


def test_next_turn_prefills_only_its_new_tokens(model):
    from glm4_edge.options import GenerationOptions

    options = GenerationOptions(max_new_tokens=4, temperature=0, ignore_eos=True)
    ids, image = prompt_ids(model, "What is this?", picture(8))
    list(model._checked(ids, image, options, [], None, True))
    forwarded = model._cached[0]
    assert forwarded[:len(ids)] == ids and len(forwarded) == len(ids) + 3  # the last answer token is not fed
    follow = forwarded + model.encode("<|user|>\nAnd then?<|assistant|>")
    reused = list(model._checked(follow, image, options, [], None, True))
    assert model.last_prefill_tokens == len(follow) - len(forwarded)
    reused_logits = model.last_prefill_logits
    model.reset()
    fresh = list(model._checked(follow, image, options, [], None, True))
    assert model.last_prefill_tokens == len(follow) - 3 + 18
    assert np.abs(reused_logits - model.last_prefill_logits).max() < LOGIT_TOLERANCE  # u8 KV cache on CPU
    assert "".join(c.text for c in reused) == "".join(c.text for c in fresh)
    assert reused[-1].stats.prompt_tokens == fresh[-1].stats.prompt_tokens
    assert reused[-1].stats.vision_encoder_s is None
    # Another image is another conversation: nothing is reused.
    list(model._checked(follow, images.open_image(picture(9)), options, [], None, True))
    assert model.last_prefill_tokens == len(follow) - 3 + 18


def test_large_towers_are_traced_in_float16_without_loss(checkpoint, reference, tmp_path, monkeypatch):
    """A full-size tower is traced in float16 to halve conversion memory; the IR must still compute in f32."""
    import openvino as ov
    from glm4_edge.convert import vision_export

    monkeypatch.setattr(vision_export, "FLOAT32_TRACE_LIMIT_BYTES", 0)
    assert vision_export.convert_vision_tower(checkpoint, tmp_path, "fp16") == "fp16"
    compiled = ov.Core().compile_model(tmp_path / images.VISION_ENCODER_XML, "CPU", F32)
    pixels = images.preprocess(images.open_image(picture(10)), 112)
    features = compiled({"pixel_values": pixels})["image_features"]
    assert np.abs(features - reference.image_features(pixels).numpy()).max() < FEATURE_TOLERANCE


def test_server_takes_image_url_parts(converted, model, tmp_path):
    """`serve` loads a GLM-4V model without parallel decoding (its --max-concurrency 2 would ask for it), answers
    an OpenAI image_url part with a data: URL as the Python API does, and refuses remote URLs, a second image,
    a broken image and images with response_format with a 400 naming `messages`."""
    import base64

    from .test_server import start_server, stop_server

    def image_turn(text: str, url: str) -> dict:
        return {"role": "user", "content": [{"type": "text", "text": text},
                                            {"type": "image_url", "image_url": {"url": url}}]}

    url = "data:image/png;base64," + base64.b64encode(png_bytes(picture(3))).decode()
    local = tmp_path / "on-the-server.png"  # a path (or file: URL) must not read the server's own files
    local.write_bytes(png_bytes(picture(3)))
    expected = model.generate("What is this?", image=picture(3), max_new_tokens=6, temperature=0).text
    server = start_server(converted, tmp_path / "serve.log", "--max-concurrency", "2")
    try:
        with server.http() as http:
            card = http.get("/v1/models").json()["data"][0]
            assert card["glm4_edge"]["input_modalities"] == ["text", "image"]
            answer = http.post("/v1/chat/completions", json={"messages": [image_turn("What is this?", url)],
                                                             "max_tokens": 6, "temperature": 0})
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"] == expected
            # Without max_tokens the default is what the context leaves after the image's tokens too.
            unbounded = http.post("/v1/chat/completions", json={"messages": [image_turn("What?", url)],
                                                                "temperature": 0, "stop": ["a", "e", "o"]})
            assert unbounded.status_code == 200, unbounded.text
            text = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                           "max_tokens": 3})
            assert text.status_code == 200
            for messages, extra, words in (
                ([image_turn("What?", "https://example.com/cat.png")], {}, "never fetches"),
                ([image_turn("What?", str(local))], {}, "never fetches URLs or reads its own files"),
                ([image_turn("What?", local.as_uri())], {}, "never fetches URLs or reads its own files"),
                ([image_turn("What?", url), {"role": "assistant", "content": "A cat."}, image_turn("And?", url)],
                 {}, "one image per conversation"),
                ([image_turn("What?", "data:image/png;base64,AAAA")], {}, "not an image"),
                ([image_turn("What?", url)], {"response_format": {"type": "json_object"}}, "response_format"),
            ):
                refused = http.post("/v1/chat/completions", json={"messages": messages, **extra})
                assert refused.status_code == 400, refused.text
                error = refused.json()["error"]
                assert words in error["message"] and error["param"] == "messages", error
    finally:
        stop_server(server)
