"""The one polling-worker loop and its counters, with stand-ins for the worker's steps."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from pixl_core.db.polling import Counters, run_loop

LOGGER = logging.getLogger("pixl.test.polling")


class Clock:
    """A stop event that records every wait and stops the loop after ``rounds`` waits."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.waits: list[float] = []

    def is_set(self) -> bool:
        return len(self.waits) >= self.rounds

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return self.is_set()


def run(stop: Clock, claims: list[Any], process=None, ready=None) -> dict[str, list[Any]]:  # type: ignore[no-untyped-def]
    """Run the loop over a scripted series of claims (an exception is raised, not returned)."""
    seen: dict[str, list[Any]] = {"processed": [], "resets": []}

    def claim() -> Any:
        outcome = claims.pop(0) if claims else None
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def default_process(work: Any) -> None:
        seen["processed"].append(work)

    run_loop(
        stop,  # type: ignore[arg-type]
        name="test worker",
        logger=LOGGER,
        db_url=None,
        claim=claim,
        process=process or default_process,
        reset=lambda: seen["resets"].append(True),
        poll_seconds=0.25,
        ready=ready,
        retry_seconds=5.0,
    )
    return seen


def test_empty_queue_sleeps_the_poll_interval():
    stop = Clock(rounds=3)
    seen = run(stop, [None, [], None])
    assert stop.waits == [0.25, 0.25, 0.25]
    assert seen["processed"] == []


def test_claimed_work_is_processed_without_sleeping():
    stop = Clock(rounds=1)
    seen = run(stop, [["a"], ["b"], None])
    assert seen["processed"] == [["a"], ["b"]]
    assert stop.waits == [0.25]  # only once the queue ran dry


def test_database_error_while_claiming_resets_the_connection_and_waits(caplog):
    stop = Clock(rounds=2)
    with caplog.at_level(logging.WARNING, LOGGER.name):
        seen = run(stop, [ConnectionError("server closed the connection for MRN123"), ["a"]])
    assert seen["resets"] == [True]
    assert seen["processed"] == [["a"]]
    assert stop.waits == [5.0, 0.25]
    assert "test worker cannot claim work (ConnectionError)" in caplog.text
    assert "MRN123" not in caplog.text  # only the type is logged, never the text


def test_error_while_processing_resets_and_the_loop_goes_on():
    stop = Clock(rounds=2)

    def process(work: Any) -> None:
        raise ConnectionError("lost the database")

    seen = run(stop, [["a"], None], process=process)
    assert seen["resets"] == [True]
    assert stop.waits == [5.0, 0.25]


def test_pause_returned_by_process_is_waited():
    stop = Clock(rounds=2)
    run(stop, [["a"], None], process=lambda work: 7.5)
    assert stop.waits == [7.5, 0.25]


def test_not_ready_skips_the_claim_until_ready():
    stop = Clock(rounds=3)
    answers = [False, False, True]
    claims: list[Any] = [["a"], None]

    def ready(event: Clock) -> bool:
        ready_now = answers.pop(0) if answers else True
        if not ready_now:
            event.wait(1.0)  # ready waits itself (a rate slot, a free place)
        return ready_now

    seen = run(stop, claims, ready=ready)
    assert seen["processed"] == [["a"]]
    assert stop.waits == [1.0, 1.0, 0.25]


def test_stops_before_claiming_when_stop_is_already_set():
    seen = run(Clock(rounds=0), [["a"]])
    assert seen["processed"] == []


def test_counters_start_at_zero_and_count_across_threads():
    counters = Counters("claimed", "failed")
    assert counters.snapshot() == {"claimed": 0, "failed": 0}

    def work() -> None:
        for _ in range(1000):
            counters.add("claimed")
            counters.add("in_flight")
            counters.add("in_flight", -1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counters.add("refused_modality_not_allowed")
    counters.set("last_error_code", "vna_timeout")
    assert counters.snapshot() == {
        "claimed": 8000,
        "failed": 0,
        "in_flight": 0,
        "refused_modality_not_allowed": 1,
        "last_error_code": "vna_timeout",
    }
    assert counters["claimed"] == 8000 and counters["never_counted"] == 0


@pytest.mark.parametrize("rounds", [1, 4])
def test_loop_returns_once_stopped(rounds: int):
    stop = Clock(rounds=rounds)
    run(stop, [])
    assert len(stop.waits) == rounds
