"""The chat page's image upload (GLM-4V models): which pages offer it, checking an uploaded file, and the
image as the chat history shows it.

The page uses `gr.Image(type="filepath", image_mode=None)`: with no mode to convert to, Gradio only reads
the upload's header (PIL.Image.open) and hands over the file as uploaded, so the model sees the user's own
bytes (a re-encoded JPEG would not be the reference's pixels). The full, bounded decode and its one-line
errors are `images.open_image`'s; a file that fails it is taken out of the upload box at once, before Gradio's
own header read could fail on it when the message is sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import images
from .errors import Glm4EdgeError


def offers_images(model: Any, kiosk_config: Any = None) -> bool:
    """True when the page shows an image upload: the model takes images (GLM-4V, `Model.accepts_images`)
    and, in kiosk mode, the config's `allow_images` is on (the default)."""
    allowed = kiosk_config is None or bool(getattr(kiosk_config, "allow_images", True))
    return bool(getattr(model, "accepts_images", False)) and allowed


def uploaded_path(value: Any) -> str | None:
    """The server-side path of a `gr.Image` value: a str (preprocessed), or Gradio's ImageData or its dict
    (an event with `preprocess=False`); None for an empty box."""
    if value is None or isinstance(value, str):
        return value or None
    path = value.get("path") if isinstance(value, dict) else getattr(value, "path", None)
    return str(path) if path else None


def image_problem(path: str) -> str | None:
    """None when `path` decodes as an image within `images.DEFAULT_MAX_IMAGE_PIXELS`, else one line saying
    why (not an image, 0 bytes, truncated, too large), naming the file by its own name, not Gradio's cache
    path. Never raises: whatever the decoder throws becomes the line."""
    name = Path(path).name
    try:
        images.open_image(path)
    except Glm4EdgeError as error:
        return str(error).replace(str(Path(path).expanduser()), name)
    except Exception as error:  # noqa: BLE001 - a decoder failure must be a line on the page, not a crash
        return f"{name} could not be decoded ({type(error).__name__}); {images.IMAGE_HINT}"
    return None


def shown_with_image(path: str, text: str) -> list[Any]:
    """The user's message as the Chatbot shows it: the image, then the text (a list of content parts)."""
    return [{"path": path, "alt_text": Path(path).name}, text]
