"""Bridge openvino-genai's streamer callback to a Python generator, with prompt cancellation.

`LLMPipeline.generate` blocks and reports text through a callback; a worker thread runs it and a
queue hands the text to the consumer. Leaving the consumer loop sets a flag that the next callback
turns into `StreamingStatus.STOP` (a callback that raises would not stop generation), and the
generator waits for the worker so the pipeline is free again when control returns.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

_DONE = object()


@dataclass
class StreamOutcome:
    result: Any = None  # the pipeline's EncodedResults (perf metrics)
    error: BaseException | None = None
    cancelled: bool = False


class CallbackStream:
    """Runs `generate(callback)` in a thread; iterating yields the text pieces the callback got."""

    def __init__(self, generate: Callable[[Callable[[str], Any]], Any], cancel: threading.Event | None = None):
        import openvino_genai

        self._running = openvino_genai.StreamingStatus.RUNNING
        self._stop = openvino_genai.StreamingStatus.STOP
        self._generate = generate
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.cancel = cancel or threading.Event()
        self.stop_requested = threading.Event()  # a stop string matched: end without "cancelled"
        self.outcome = StreamOutcome()
        self._thread = threading.Thread(target=self._work, name="glm4-edge-generate", daemon=True)
        self._thread.start()

    def _callback(self, text: str):
        if self.cancel.is_set() or self.stop_requested.is_set():
            return self._stop
        if text:
            self._queue.put(text)
        return self._running

    def _work(self) -> None:
        try:
            self.outcome.result = self._generate(self._callback)
        except BaseException as error:  # handed to the consumer thread, which re-raises it
            self.outcome.error = error
        finally:
            self._queue.put(_DONE)

    def __iter__(self) -> Iterator[str]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                break
            yield item
        self._thread.join()
        self.outcome.cancelled = self.cancel.is_set()
        if self.outcome.error is not None:
            raise self.outcome.error

    def close(self) -> None:
        """Stop generation within a token and wait until the pipeline is free."""
        self.cancel.set()
        self._thread.join()
        self.outcome.cancelled = True
