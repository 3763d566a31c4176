"""The worker's batcher: everything waiting runs as one batch, bounded queue, deadline, isolation."""

from __future__ import annotations

import asyncio
import threading

import pytest

from serving.batcher import Batcher, BatchStats
from serving.errors import NotReady, Overloaded


class Model:
    """Doubles numbers; ``gate`` holds the model thread so requests pile up behind a batch."""

    def __init__(self):
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, payloads):
        self.gate.wait(5)
        self.batches.append(list(payloads))
        if any(p < 0 for p in payloads):
            raise ValueError("negative")
        return [2 * p for p in payloads]


def run(coro):
    return asyncio.run(coro)


def started(model, **kwargs) -> Batcher:
    options = {"max_batch": 8, "max_queue": 100, "deadline_s": 5.0} | kwargs
    batcher = Batcher(model, **options)
    batcher.start()
    return batcher


async def _pile_up(batcher: Batcher, model: Model, payloads: list[int]) -> list:
    """The first request occupies the model; the rest arrive while it is busy."""
    model.gate.clear()
    first = asyncio.ensure_future(batcher.submit(payloads[0]))
    await asyncio.sleep(0.05)
    rest = [asyncio.ensure_future(batcher.submit(p)) for p in payloads[1:]]
    await asyncio.sleep(0.05)
    model.gate.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


def test_a_lone_request_runs_at_once_as_a_batch_of_one():
    model = Model()
    batcher = started(model)
    assert run(batcher.submit(21)) == 42
    assert model.batches == [[21]]
    batcher.close()


def test_requests_waiting_while_the_model_is_busy_run_together_up_to_max_batch():
    model, stats = Model(), []
    batcher = started(model, max_batch=4, on_batch=stats.append)
    answers = run(_pile_up(batcher, model, list(range(10))))
    assert answers == [2 * p for p in range(10)]
    assert model.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert [s.size for s in stats] == [1, 4, 4, 1] and all(isinstance(s, BatchStats) for s in stats)
    assert min(stats[1].waits_s) > 0.0  # they waited behind the first batch
    batcher.close()


def test_past_max_queue_a_request_is_shed_at_once_with_retry_after():
    model, shed = Model(), []
    batcher = started(model, max_queue=3, on_shed=shed.append)
    answers = run(_pile_up(batcher, model, list(range(6))))
    refused = [a for a in answers if isinstance(a, Overloaded)]
    assert answers[:4] == [0, 2, 4, 6] and len(refused) == 2
    assert refused[0].status == 503 and refused[0].headers == {"Retry-After": "1"}
    assert "max_queue 3" in refused[0].detail and shed == ["queue_full", "queue_full"]
    batcher.close()


def test_a_request_that_waited_past_its_deadline_is_shed_not_run():
    model, shed = Model(), []
    batcher = started(model, deadline_s=0.01, on_shed=shed.append)
    answers = run(_pile_up(batcher, model, [1, 2, 3]))
    assert answers[0] == 2
    assert all(isinstance(a, Overloaded) and "deadline" in a.detail for a in answers[1:])
    assert model.batches == [[1]] and shed == ["deadline", "deadline"]
    batcher.close()


def test_a_failing_request_fails_alone_and_its_batch_mates_are_answered():
    model = Model()
    batcher = started(model)
    answers = run(_pile_up(batcher, model, [1, 2, -3, 4]))
    assert answers[:2] == [2, 4] and answers[3] == 8
    assert isinstance(answers[2], ValueError)
    assert [2, -3, 4] in model.batches and [-3] in model.batches  # the batch, then each alone
    batcher.close()


def test_a_stopped_batcher_answers_not_ready():
    batcher = Batcher(Model(), max_batch=4, max_queue=4, deadline_s=1.0)
    with pytest.raises(NotReady):
        run(batcher.submit(1))
