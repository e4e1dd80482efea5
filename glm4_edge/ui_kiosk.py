"""Kiosk settings and the page's look: `KioskConfig` read from TOML (`load_kiosk_config`), fonts and CSS.

Gradio-free, so a kiosk file can be checked before Gradio is imported (see `glm4_edge.ui`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import Glm4EdgeError
from .ui_strings import LANGUAGES

DEFAULT_TITLE = "GLM-4 Edge"
DEFAULT_IDLE_MINUTES = 5.0
# Kiosk questions are short; a pasted essay would only fill the context and keep other visitors waiting.
# 500 characters is about 100 English words or a paragraph of Chinese (a few hundred tokens).
DEFAULT_MAX_INPUT_CHARS = 500

# System fonts only: the default theme's web fonts would be one more thing to serve, and CJK text
# needs a CJK font (Noto CJK on Linux, YaHei / PingFang elsewhere) that no web font bundle carries.
SYSTEM_FONTS = ("system-ui", "-apple-system", "Segoe UI", "Roboto", "Noto Sans", "Noto Sans CJK SC",
                "Microsoft YaHei", "PingFang SC", "Helvetica Neue", "Arial", "sans-serif")
MONO_FONTS = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Noto Sans Mono CJK SC",
              "DejaVu Sans Mono", "monospace")

CSS = """
#model-info { opacity: 0.8; }
.answer-footer { display: block; margin-top: 0.6em; font-size: 0.8em; opacity: 0.65; }
footer { visibility: visible; }
/* A file in the chat (an uploaded image) gets Gradio's share button, which posts to Hugging Face: never here. */
#chatbot button[aria-label="Share"] { display: none; }
"""

# Kiosk: big type and big touch targets (about 60 px, above the 48 px touch guideline).
KIOSK_CSS = CSS + """
#kiosk-title h1 { font-size: 2.4rem; margin: 0.2em 0; }
#kiosk-welcome { font-size: 1.3rem; }
#chatbot .message, #chatbot .message * { font-size: 1.35rem; line-height: 1.55; }
#prompt textarea { font-size: 1.4rem !important; min-height: 60px; }
button { min-height: 60px; font-size: 1.3rem !important; }
#chatbot .example { min-height: 60px; font-size: 1.2rem; }
"""


@dataclass(frozen=True)
class KioskConfig:
    """What a kiosk shows; read from TOML with `load_kiosk_config`."""

    title: str = DEFAULT_TITLE
    welcome: str = ""  # empty: a default greeting in `language`
    language: str = "en"
    idle_minutes: float = DEFAULT_IDLE_MINUTES  # 0 = never clear
    examples: tuple[str, ...] = ()  # empty: the built-in en/zh examples
    system_prompt: str = ""
    max_input_chars: int = DEFAULT_MAX_INPUT_CHARS  # longer messages get a friendly "too long" note
    allow_upload: bool = False  # documents may be uploaded (off: a public kiosk takes no files)
    allow_images: bool = True  # a GLM-4V model's image upload (a text-only model never shows one)


_CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "title": (str,), "welcome": (str,), "language": (str,), "idle_minutes": (int, float),
    "examples": (list,), "system_prompt": (str,), "max_input_chars": (int,),
    "allow_upload": (bool,), "allow_images": (bool,),
}


def load_kiosk_config(path: str | Path) -> KioskConfig:
    """Read and check a kiosk TOML file; any problem is one actionable `Glm4EdgeError` line."""
    path = Path(path).expanduser()
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise Glm4EdgeError(f"--config {path}: no such file; see docs/kiosk.example.toml") from None
    except (OSError, UnicodeDecodeError) as error:
        raise Glm4EdgeError(f"--config {path}: cannot read it ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise Glm4EdgeError(f"--config {path}: not valid TOML ({error})") from None
    unknown = sorted(set(data) - set(_CONFIG_TYPES))
    if unknown:
        raise Glm4EdgeError(f"--config {path}: unknown key(s) {', '.join(unknown)}; "
                            f"known keys: {', '.join(_CONFIG_TYPES)}")
    for key, value in data.items():
        expected = _CONFIG_TYPES[key]
        if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
            raise Glm4EdgeError(f"--config {path}: {key} must be {_type_words(expected)}, "
                                f"got {type(value).__name__}")
    if data.get("language", "en") not in LANGUAGES:
        raise Glm4EdgeError(f"--config {path}: language must be one of {', '.join(LANGUAGES)}, "
                            f"got {data['language']!r}")
    if data.get("idle_minutes", 0) < 0:
        raise Glm4EdgeError(f"--config {path}: idle_minutes must be 0 (never) or more, "
                            f"got {data['idle_minutes']}")
    if data.get("max_input_chars", 1) < 1:
        raise Glm4EdgeError(f"--config {path}: max_input_chars must be 1 or more, got {data['max_input_chars']}")
    examples = data.get("examples", [])
    if not all(isinstance(item, str) and item.strip() for item in examples):
        raise Glm4EdgeError(f"--config {path}: examples must be a list of non-empty strings")
    return KioskConfig(**{**data, "examples": tuple(examples)})


def _type_words(types: tuple[type, ...]) -> str:
    words = {str: "a string", int: "a number", float: "a number", list: "a list", bool: "true or false"}
    return " or ".join(dict.fromkeys(words[t] for t in types))
