"""The worker's batcher: everything waiting runs as one batch, bounded queue, deadline, isolation."""

from __future__ import annotations

import asyncio
import time

import pytest

from serving.batcher import Batcher, BatchStats, ShedWhenFull
from serving.errors import NotReady, Overloaded


class Model:
    """Doubles numbers, ``busy_s`` per batch (the event loop is blocked meanwhile, as in serving)."""

    def __init__(self, busy_s: float = 0.0):
        self.batches: list[list[int]] = []
        self.busy_s = busy_s

    def __call__(self, payloads):
        time.sleep(self.busy_s)
        self.batches.append(list(payloads))
        if any(p < 0 for p in payloads):
            raise ValueError("negative")
        return [2 * p for p in payloads]


def started(model, **kwargs) -> Batcher:
    options = {"max_batch": 8, "max_queue": 100, "deadline_s": 5.0} | kwargs
    batcher = Batcher(model, **options)
    batcher.start()
    return batcher


def arrive_together(batcher: Batcher, payloads: list[int]) -> list:
    """Requests read by the event loop in one turn, as from one poll of many sockets."""

    async def together():
        return await asyncio.gather(*(batcher.submit(p) for p in payloads), return_exceptions=True)

    return asyncio.run(together())


def test_a_lone_request_runs_at_once_as_a_batch_of_one():
    model = Model()
    assert asyncio.run(started(model).submit(21)) == 42
    assert model.batches == [[21]]


def test_requests_waiting_together_run_together_up_to_max_batch():
    model, stats = Model(), []
    answers = arrive_together(started(model, max_batch=4, on_batch=stats.append), list(range(10)))
    assert answers == [2 * p for p in range(10)]
    assert model.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [s.size for s in stats] == [4, 4, 2] and all(isinstance(s, BatchStats) for s in stats)


def test_requests_arriving_while_a_batch_runs_make_the_next_batch():
    model = Model(busy_s=0.05)
    batcher = started(model)

    async def scenario():
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0)  # the drain task starts the first batch on the loop's next turn
        later = [asyncio.ensure_future(batcher.submit(p)) for p in (2, 3, 4)]
        return await asyncio.gather(first, *later)

    assert asyncio.run(scenario()) == [2, 4, 6, 8]
    assert model.batches == [[1], [2, 3, 4]]


def test_the_loop_gets_a_turn_between_batches():
    # What arrives on the sockets while a batch runs is read before the next batch, not after
    # the whole queue has drained.
    turns = []

    def model(payloads):
        turns.append(list(payloads))
        if len(turns) == 1:
            asyncio.get_running_loop().call_soon(turns.append, "loop turn")
        return payloads

    assert arrive_together(started(model, max_batch=2), [1, 2, 3, 4]) == [1, 2, 3, 4]
    assert turns == [[1, 2], "loop turn", [3, 4]]


def test_with_the_queue_full_model_routes_are_shed_before_the_app_sees_them():
    shed, reached, sent = [], [], []

    async def app(scope, receive, send):
        reached.append(scope["path"])

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    async def scenario():
        batcher = started(Model(), max_queue=1, on_shed=shed.append)
        queued = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0)  # queued; its batch runs on a later turn of the loop
        middleware = ShedWhenFull(app, batcher, ["/recommend"])
        for path in ("/recommend", "/healthz"):
            await middleware({"type": "http", "method": "GET", "path": path, "headers": []}, receive, send)
        answer = await queued
        await middleware({"type": "http", "method": "GET", "path": "/recommend", "headers": []}, receive, send)
        return answer

    assert asyncio.run(scenario()) == 2
    start = sent[0]
    assert start["status"] == 503 and (b"retry-after", b"1") in start["headers"]
    assert b'"error":"overloaded"' in sent[1]["body"] and b"max_queue 1" in sent[1]["body"]
    assert reached == ["/healthz", "/recommend"] and shed == ["queue_full"]  # shed once, then let through


def test_past_max_queue_a_request_is_shed_at_once_with_retry_after():
    shed = []
    answers = arrive_together(started(Model(), max_queue=3, on_shed=shed.append), list(range(6)))
    refused = [a for a in answers if isinstance(a, Overloaded)]
    assert answers[:3] == [0, 2, 4] and len(refused) == 3
    assert refused[0].status == 503 and refused[0].headers == {"Retry-After": "1"}
    assert "max_queue 3" in refused[0].detail and shed == ["queue_full"] * 3


def test_a_request_that_waited_past_its_deadline_is_shed_not_run():
    model, shed, stats = Model(busy_s=0.05), [], []
    batcher = started(model, max_batch=1, deadline_s=0.02, on_shed=shed.append, on_batch=stats.append)
    answers = arrive_together(batcher, [1, 2, 3])
    assert answers[0] == 2
    assert all(isinstance(a, Overloaded) and "deadline" in a.detail for a in answers[1:])
    assert model.batches == [[1]] and shed == ["deadline", "deadline"]


def test_a_failing_request_fails_alone_and_its_batch_mates_are_answered():
    model = Model()
    answers = arrive_together(started(model), [1, 2, -3, 4])
    assert answers[:2] == [2, 4] and answers[3] == 8
    assert isinstance(answers[2], ValueError)
    assert model.batches[0] == [1, 2, -3, 4] and [-3] in model.batches  # the batch, then each alone


def test_a_stopped_batcher_answers_not_ready():
    batcher = Batcher(Model(), max_batch=4, max_queue=4, deadline_s=1.0)
    with pytest.raises(NotReady):
        asyncio.run(batcher.submit(1))
