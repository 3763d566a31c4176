"""Continuous batching: run the model once for every request waiting, the way inference servers do.

A /recommend or /similar request is parsed on the event loop, then handed to the worker's
`Batcher` and awaited. A drain task takes *everything* waiting (up to ``max_batch``), answers the
whole batch with one pass of the pipeline and resolves each request's future. There is no wait
window: a lone request on an idle server runs on the loop's next turn, and batches form only
while the model is busy, which is exactly when they pay. Requests that arrive while a batch runs
are read by the loop right after it and make up the next batch.

The batch runs on the event-loop thread itself. A model thread would let the loop parse requests
during a batch, but a worker has one core and the GIL, so the overlap buys little, and the hand-off
to a thread and back is one more thing per request (measured both ways on ml-100k at light load:
the difference was within this machine's noise).

The queue is bounded: past ``max_queue`` waiting requests, or once a request has waited longer
than ``deadline_s``, the request is shed with `Overloaded` (503 + ``Retry-After``) instead of
making every later request slower. While the queue is full, `ShedWhenFull` answers model routes
before they are parsed: a shed request then costs an HTTP parse, not a validated request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.errors import NotReady, Overloaded, error_response

log = logging.getLogger(__name__)

# Runs one batch: a list of payloads -> one result (or exception) per payload, in order.
BatchRunner = Callable[[Sequence[Any]], Sequence[Any]]


@dataclass
class Job:
    payload: Any
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class BatchStats:
    size: int
    waits_s: list[float]  # each request's time in the queue


class Batcher:
    def __init__(self, run: BatchRunner, max_batch: int, max_queue: int, deadline_s: float,
                 retry_after_s: int = 1, on_batch: Callable[[BatchStats], None] | None = None,
                 on_shed: Callable[[str], None] | None = None):
        self.run = run
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.deadline_s = deadline_s
        self.retry_after_s = retry_after_s
        self.on_batch = on_batch
        self.on_shed = on_shed
        self._waiting: deque[Job] = deque()
        self._draining = False
        self._running = False

    def start(self) -> None:
        """Accept requests (the app's lifespan does; a stopped batcher answers 503)."""
        self._running = True

    def close(self) -> None:
        self._running = False
        while self._waiting:  # nothing is left hanging
            job = self._waiting.popleft()
            if not job.future.done():
                job.future.set_exception(NotReady("the model queue stopped (the server is shutting down)"))

    async def submit(self, payload: Any) -> Any:
        """The payload's result once its batch has run; `Overloaded` when the queue is full or
        the request waited past its deadline."""
        if not self._running:
            raise NotReady("the model queue is not running: wait until GET /readyz answers 200")
        if self.full():
            raise self.shed_full()
        loop = asyncio.get_running_loop()
        job = Job(payload, loop.create_future())
        self._waiting.append(job)
        if not self._draining:
            # Scheduled, not run here: the requests already read by the loop this turn join the batch.
            self._draining = True
            loop.create_task(self._drain())
        return await job.future

    def full(self) -> bool:
        """Whether a request arriving now would be shed (the admission middleware asks before parsing)."""
        return len(self._waiting) >= self.max_queue

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._take()
                if batch:
                    self._answer(batch)
                # One batch per turn of the loop: between batches the loop reads the sockets, so new
                # requests are parsed (and shed at once if the queue is full) instead of waiting
                # unseen in socket buffers while the queue drains.
                await asyncio.sleep(0)
        finally:
            self._draining = False

    def _answer(self, batch: list[Job]) -> None:
        started = time.perf_counter()
        results = self._run_batch([job.payload for job in batch])
        for job, result in zip(batch, results, strict=True):
            if job.future.done():  # the client went away
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
        if self.on_batch is not None:
            self.on_batch(BatchStats(len(batch), [started - job.enqueued for job in batch]))

    def _take(self) -> list[Job]:
        """Up to ``max_batch`` waiting jobs; those past their deadline are answered 503 instead."""
        now = time.perf_counter()
        batch = []
        while self._waiting and len(batch) < self.max_batch:
            job = self._waiting.popleft()
            if job.future.done():
                continue
            if now - job.enqueued > self.deadline_s:
                self._shed("deadline")
                job.future.set_exception(self._overloaded(
                    f"the request waited {now - job.enqueued:.3f} s for the model (deadline {self.deadline_s} s)"))
                continue
            batch.append(job)
        return batch

    def _run_batch(self, payloads: list[Any]) -> Sequence[Any]:
        """The batch's results, or exceptions in their place: if the batch as a whole fails, each
        request is run alone, so one bad request fails only itself."""
        try:
            return self.run(payloads)
        except Exception as exc:
            if len(payloads) == 1:
                return [exc]
            log.warning("a batch of %d failed (%s); answering its requests one by one", len(payloads), exc)
            return [self._run_alone(payload) for payload in payloads]

    def _run_alone(self, payload: Any) -> Any:
        try:
            return self.run([payload])[0]
        except Exception as exc:  # returned, not raised: it becomes this request's answer
            return exc

    def shed_full(self) -> Overloaded:
        """Count a request shed because the queue is full; the error to answer it with."""
        self._shed("queue_full")
        return self._overloaded(f"the model queue is full (max_queue {self.max_queue} requests waiting)")

    def _shed(self, reason: str) -> None:
        if self.on_shed is not None:
            self.on_shed(reason)

    def _overloaded(self, detail: str) -> Overloaded:
        return Overloaded(f"overloaded, retry later: {detail}", {"Retry-After": str(self.retry_after_s)})


class ShedWhenFull:
    """Answers a model request 503 before it is parsed when the batcher's queue is already full.

    The batcher sheds at ``submit`` too, but by then the request has been through routing, query
    validation and the history lookup: under overload a closed-loop client retries at once, and
    shedding that late spends the core on requests that are thrown away. Here a shed request
    costs an HTTP parse and a few hundred bytes of JSON.
    """

    def __init__(self, app: ASGIApp, batcher: Batcher, paths: Collection[str]):
        self.app = app
        self.batcher = batcher
        self.paths = frozenset(paths)
        self._refusal: Response | None = None  # the same 503 every time: built once, sent as is

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.paths and self.batcher.full():
            exc = self.batcher.shed_full()
            if self._refusal is None:
                self._refusal = error_response(exc.status, exc.code, exc.detail, exc.headers)
            await self._refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)
