"""Images for GLM-4V: decode (bounded), preprocess as the reference does, position ids, file names.

Pillow and numpy only (no torch at run time). The preprocessing is THUDM/glm-4v-9b's torchvision
pipeline written out: RGB, `Resize((S, S), BICUBIC)` (on a PIL image torchvision calls PIL's own
bicubic resize), `ToTensor` (/255 as float32), `Normalize(CLIP mean, CLIP std)`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadParameterError

# The converted parts of a GLM-4V model folder (the names openvino.genai's VLM exports use).
LANGUAGE_MODEL_XML = "openvino_language_model.xml"
TEXT_EMBEDDINGS_XML = "openvino_text_embeddings_model.xml"
VISION_ENCODER_XML = "openvino_vision_embeddings_model.xml"
VISION_FILES = (LANGUAGE_MODEL_XML, TEXT_EMBEDDINGS_XML, VISION_ENCODER_XML)

# OpenAI CLIP's normalisation, which glm-4v-9b's tokenizer (tokenization_chatglm.py) applies.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Decoding is refused above this many pixels, read from the header before any pixel is decoded
# (a 20000x20000 PNG is 400 Mpx = 1.2 GB of RGB). 50 Mpx is larger than any phone camera's output;
# the model sees 1120x1120 anyway.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
# OpenAI chat content parts that carry an image ("image" is THUDM's own message key, also accepted as a part).
IMAGE_PART_TYPES = ("image_url", "input_image", "image")
IMAGE_HINT = "give a PNG, JPEG, WebP, GIF or BMP image"


def open_image(source: Any, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
    """A fully decoded RGB `PIL.Image` from a path, bytes, a `data:` URL or a PIL image.

    Raises BadParameterError (one line, param "image") for a missing file, 0 bytes, data that is
    not an image, a truncated file, an image over `max_pixels` pixels (checked from the header,
    before decoding) and a remote http(s) URL (nothing is fetched from the network).
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Image.Image):
        return _checked_size(source, max_pixels, "the image").convert("RGB")
    name, data = _read_source(source)
    if not data:
        raise BadParameterError(f"{name} is empty (0 bytes); {IMAGE_HINT}", "image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower limit applies
            image = Image.open(io.BytesIO(data))
            _checked_size(image, max_pixels, name)
            image.load()
            return image.convert("RGB")
    except Image.DecompressionBombError:
        # Pillow's own bomb check fires in open() for the most extreme sizes, before ours can read them.
        raise BadParameterError(f"{name} is over the {max_pixels // 1_000_000} megapixel limit (too large to decode "
                                "safely); downscale it first", "image") from None
    except BadParameterError:  # our size check: a ValueError too, but already the right one line
        raise
    except UnidentifiedImageError:
        raise BadParameterError(f"{name} is not an image Pillow can read; {IMAGE_HINT}", "image") from None
    except (OSError, ValueError, SyntaxError) as error:  # Pillow's ways of saying the data ends early or is bad
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise BadParameterError(f"{name} could not be decoded ({reason}); the file is truncated or corrupted: "
                                f"{IMAGE_HINT}", "image") from None


def holds_image(turns: Sequence[dict[str, Any]]) -> bool:
    """Whether the conversation the model sees already carries its one image.

    A trailing user turn has no answer (it failed; the next message replaces it), so its image does not count.
    """
    settled = turns[:-1] if turns and turns[-1].get("role") == "user" else turns
    return any(turn.get("image") for turn in settled)


def _checked_size(image, max_pixels: int, name: str):
    width, height = image.size
    if width * height > max_pixels:
        raise BadParameterError(f"{name} is {width}x{height} pixels, over the {max_pixels // 1_000_000} megapixel "
                                "limit; downscale it first (the model sees it at its own input size anyway)", "image")
    if width < 1 or height < 1:
        raise BadParameterError(f"{name} has no pixels ({width}x{height}); {IMAGE_HINT}", "image")
    return image


def _read_source(source: Any) -> tuple[str, bytes]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "the image bytes", bytes(source)
    if isinstance(source, str) and source.startswith("data:"):
        header, _, payload = source.partition(",")
        if ";base64" not in header:
            raise BadParameterError("a data: URL image must be base64-encoded (data:image/png;base64,...)", "image")
        try:
            return "the data: URL image", base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise BadParameterError("the data: URL image is not valid base64", "image") from None
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        raise BadParameterError("remote image URLs are not fetched (glm4-edge never downloads at run time); "
                                "download the image and give its path or a data: URL", "image")
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        try:
            return str(path), path.read_bytes()
        except FileNotFoundError:
            raise BadParameterError(f"{path}: no such image file", "image") from None
        except IsADirectoryError:
            raise BadParameterError(f"{path} is a folder; give an image file", "image") from None
        except OSError as error:
            raise BadParameterError(f"cannot read {path} ({error.strerror or error})", "image") from None
    raise BadParameterError(f"an image must be a path, bytes, a data: URL or a PIL image, not "
                            f"{type(source).__name__}", "image")


def image_digest(image) -> str:
    """Content hash of a decoded RGB image (size and pixels): equal images share cached features."""
    digest = hashlib.sha256(f"{image.size[0]}x{image.size[1]}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def preprocess(image, size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> np.ndarray:
    """pixel_values [1, 3, size, size] float32 from an RGB PIL image, as the reference preprocessing."""
    from PIL import Image

    resized = image.resize((size, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
    pixels = (pixels - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])


def image_position_ids(length: int, boi_index: int, image_tokens: int) -> np.ndarray:
    """Position ids [length - 3 + image_tokens + 2] for a prompt of `length` tokens with its image placeholder
    (boi, one token, eoi) at `boi_index`, as THUDM's modeling_chatglm.py (glm-4v-9b) assigns them.

    The prompt counts as if unexpanded: boi keeps its position, every image token gets boi's + 1,
    eoi and the rest keep theirs (so decoding continues at `length`).
    """
    base = np.arange(length, dtype=np.int64)
    return np.concatenate([base[:boi_index + 1], np.full(image_tokens, boi_index + 1, dtype=np.int64),
                           base[boi_index + 2:]])
