"""glm4-edge: GLM-4 on Intel CPU, GPU and NPU through OpenVINO.

    import glm4_edge
    model = glm4_edge.load("models/glm4-tiny-chat-int4-ov", device="CPU")
    for chunk in model.stream("Hello!"):
        print(chunk.text, end="", flush=True)
"""

from .conversation import Chat
from .errors import BadParameterError, ContextOverflowError, DeviceError, Glm4EdgeError, ModelFormatError
from .loading import load
from .model import Chunk, GenerationStats, Model, Reply

__all__ = [
    "load",
    "Model",
    "Chat",
    "Chunk",
    "Reply",
    "GenerationStats",
    "Glm4EdgeError",
    "ModelFormatError",
    "DeviceError",
    "ContextOverflowError",
    "BadParameterError",
]
__version__ = "0.1.0"
