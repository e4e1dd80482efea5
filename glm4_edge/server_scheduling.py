"""From worker threads to the event loop: a generation's chunks, client disconnects, and the slots
(`max_concurrency`) requests wait for."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .model import Chunk
from .server_common import LOG, _first_line

if TYPE_CHECKING:
    from .server_metrics import Metrics

# --- async bridge ------------------------------------------------------------------------------------


class ClientGone(Exception):
    """The client disconnected; nobody is left to answer."""


_END = object()


@dataclass
class _Failure:
    error: BaseException


class Generation:
    """One request's chunks, produced by a worker thread and read on the event loop."""

    def __init__(self, cancel: threading.Event):
        self.cancel = cancel
        self.queue: asyncio.Queue = asyncio.Queue()
        self.ended = False

    async def next(self) -> Chunk | None:
        """The next chunk; None after the last; re-raises what the worker raised."""
        if self.ended:
            return None
        item = await self.queue.get()
        if item is _END:
            self.ended = True
            return None
        if isinstance(item, _Failure):
            self.ended = True
            raise item.error
        return item

    async def chunks(self, first: Chunk | None) -> AsyncIterator[Chunk]:
        """`first` (already read, to choose the response's status), then every chunk after it."""
        chunk = first
        while chunk is not None:
            yield chunk
            chunk = await self.next()


class DisconnectWatch:
    """Sets `cancel` when the client disconnects, and lets awaits give up when it does."""

    def __init__(self, receive: Callable, cancel: threading.Event):
        self._receive = receive
        self._cancel = cancel
        self.gone = asyncio.Event()
        self._task = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._cancel.set()
                self.gone.set()
                return

    async def wait_gone(self) -> dict[str, str]:
        """An ASGI `receive` for code that listens for the disconnect while this watch reads."""
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def race(self, awaitable) -> Any:
        work = asyncio.ensure_future(awaitable)
        gone = asyncio.ensure_future(self.gone.wait())
        done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        gone.cancel()
        if work in done:
            return work.result()
        work.cancel()
        raise ClientGone

    def stop(self) -> None:
        self._task.cancel()


class Scheduler:
    """At most `max_concurrency` generations at once; the rest wait in FIFO order (asyncio.Semaphore)."""

    def __init__(self, max_concurrency: int, metrics: Metrics):
        self.metrics = metrics
        self._slots = asyncio.Semaphore(max_concurrency)
        self._executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="glm4-edge-request")
        self._active: set[threading.Event] = set()

    async def start(self, stream: Iterator[Chunk], cancel: threading.Event,
                    watch: DisconnectWatch) -> Generation:
        """Wait for a slot (giving up if the client leaves), then run `stream` in a worker thread."""
        queued_at = time.perf_counter()
        self.metrics.add("queued")
        try:
            await watch.race(self._slots.acquire())
        except ClientGone:
            stream.close()  # type: ignore[attr-defined]
            self.metrics.add("cancelled")  # left while queued: a cancelled request all the same
            raise
        finally:
            self.metrics.add("queued", -1)
        self.metrics.waited(time.perf_counter() - queued_at)
        self.metrics.add("in_flight")
        self._active.add(cancel)
        generation = Generation(cancel)
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._work, stream, generation, loop)
        future.add_done_callback(lambda _: self._finished(cancel))
        return generation

    def _finished(self, cancel: threading.Event) -> None:
        self._active.discard(cancel)
        self.metrics.add("in_flight", -1)
        self._slots.release()

    def _work(self, stream: Iterator[Chunk], generation: Generation, loop: asyncio.AbstractEventLoop) -> None:
        def hand_over(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(generation.queue.put_nowait, item)
            except RuntimeError:  # the loop closed during shutdown: nobody to tell
                pass

        stats, reason = None, None
        try:
            if generation.cancel.is_set():  # the client left while this request was queued
                reason = "cancelled"
                return
            for chunk in stream:
                if chunk.finish_reason:
                    stats, reason = chunk.stats, chunk.finish_reason
                hand_over(chunk)
        except BaseException as error:  # handed to the request, which answers with an error
            LOG.warning("generation failed: %s", _first_line(error))
            LOG.debug("generation failure", exc_info=True)
            hand_over(_Failure(error))
        finally:
            stream.close()  # type: ignore[attr-defined]
            self.metrics.generation_done(stats, reason == "cancelled" or generation.cancel.is_set())
            hand_over(_END)

    def cancel_all(self) -> None:
        for cancel in list(self._active):
            cancel.set()
        self._executor.shutdown(wait=False, cancel_futures=True)


# --- streamed answers --------------------------------------------------------------------------------


class EventStream:
    """An SSE response that stops its generation however the response ends.

    Starlette cancels a streaming body when it sees the client leave, and the body's `finally` stops
    the model; but a body generator that is merely abandoned (a failed send, a server shutting down)
    runs its `finally` only when the garbage collector gets to it, and until then the generation
    decodes on in its slot. Here a disconnect watch runs beside the body, and the response's own
    `finally` sets the cancel event and closes the body, whatever ended it.
    """

    def __init__(self, generation: Generation, body: AsyncIterator[str]):
        self.generation, self.body = generation, body

    async def __call__(self, scope, receive, send) -> None:
        from starlette.responses import StreamingResponse

        response = StreamingResponse(self.body, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        watch = DisconnectWatch(receive, self.generation.cancel)
        try:
            # The watch reads `receive`; Starlette's own listener gets a receive that waits with it.
            await watch.race(response(scope, watch.wait_gone, send))
        except ClientGone:
            pass
        finally:
            watch.stop()
            self.generation.cancel.set()
            await self.body.aclose()  # type: ignore[attr-defined]
