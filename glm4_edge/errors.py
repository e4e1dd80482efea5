"""One error family for everything a user can get wrong; each message says what to do."""


class Glm4EdgeError(Exception):
    """Base class: the CLI prints the message on one line and exits 2."""


class ModelFormatError(Glm4EdgeError):
    """The folder is not a model this package can read, or it was converted for another target."""


class DeviceError(Glm4EdgeError):
    """The requested OpenVINO device is missing or cannot run this model."""


class ContextOverflowError(Glm4EdgeError):
    """Prompt plus requested new tokens do not fit the model's context window."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context: int):
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.context = context
        # Lowering max_new_tokens helps only when the prompt alone fits.
        remedy = "shorten the conversation" + (" or lower max_new_tokens" if prompt_tokens < context else "")
        super().__init__(
            f"prompt ({prompt_tokens} tokens) + max_new_tokens ({max_new_tokens}) = "
            f"{prompt_tokens + max_new_tokens} exceeds the model's context of {context} tokens; {remedy}"
        )


class BadParameterError(Glm4EdgeError, ValueError):
    """A generation or conversion option has a value that cannot work."""

    def __init__(self, message: str, param: str | None = None):
        self.param = param
        super().__init__(message)
