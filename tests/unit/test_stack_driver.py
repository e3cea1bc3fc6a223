"""What the stack driver calls settled, without a stack: the counts come from a stand-in."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from stack.driver import Counts, NotSettledError, Stack
from stack.settings import StackSettings


def counts(**states: int) -> dict[str, int]:
    return {"queued": 0, "fetching": 0, "anonymising": 0, "exported": 0, "failed": 0, **states}


def test_a_project_without_work_is_not_settled():
    assert not Counts({}).settled(["chest-xray"])
    assert not Counts({"chest-xray": counts()}).settled(["chest-xray"])


def test_a_project_is_settled_when_none_of_its_studies_is_busy():
    assert Counts({"chest-xray": counts(exported=3, failed=1)}).settled(["chest-xray"])
    busy = Counts({"chest-xray": counts(exported=3, anonymising=1)})
    assert not busy.settled(["chest-xray"])
    assert busy.busy("chest-xray") == 1 and busy.total("chest-xray") == 4


def test_reports_count_only_when_asked_for():
    studies = {"chest-xray": counts(exported=2)}
    waiting = Counts(studies, {"chest-xray": {"deidentifying": 1, "checked": 1}})
    assert waiting.settled(["chest-xray"])
    assert not waiting.settled(["chest-xray"], reports=True)
    done = Counts(studies, {"chest-xray": {"flagged": 1, "checked": 1}})
    assert done.settled(["chest-xray"], reports=True)
    assert not Counts(studies).settled(["chest-xray"], reports=True)


class ScriptedStack(Stack):
    """A driver whose counts come from a list, one per check."""

    def __init__(self, script: list[Counts]) -> None:
        super().__init__(StackSettings(root=Path("/nonexistent"), ports={}))
        self.script = script
        self.checks = 0

    def counts(self, *, reports: bool = False) -> Counts:
        self.checks += 1
        return self.script[min(self.checks, len(self.script)) - 1]


def test_wait_returns_the_first_settled_counts_and_shows_each_check():
    busy = Counts({"p": counts(queued=1)})
    done = Counts({"p": counts(exported=1)})
    stack = ScriptedStack([busy, busy, done])
    seen: list[Counts] = []
    assert stack.wait_until_settled(["p"], 10, poll_s=0.01, on_poll=seen.append) is done
    assert seen == [busy, busy, done]


def test_wait_raises_with_the_last_counts_at_the_timeout():
    busy = Counts({"p": counts(fetching=2)})
    stack = ScriptedStack([busy])
    with pytest.raises(
        NotSettledError, match=r"not settled after 0 s: p studies \{'fetching': 2\}"
    ):
        stack.wait_until_settled(["p"], 0.05, poll_s=0.01)


def test_wait_with_a_hint_asks_only_when_the_hint_is_set():
    done = Counts({"p": counts(exported=1)})
    stack = ScriptedStack([done])
    hint = threading.Event()
    with pytest.raises(NotSettledError):
        stack.wait_until_settled(["p"], 0.05, poll_s=0.01, hint=hint)
    assert stack.checks == 0
    hint.set()
    assert stack.wait_until_settled(["p"], 1, poll_s=0.01, hint=hint) is done
    assert stack.checks == 1


def test_down_stops_the_workers_then_the_stand_ins_and_postgres_last(tmp_path, monkeypatch):
    """`make down`: nothing that writes to Postgres is still running when Postgres stops, so
    the shutdown logs no lost-database errors (supervisord alone stops in reverse name order,
    Postgres among the first)."""
    import os

    from stack import local_stack

    settings = StackSettings.for_tests(tmp_path)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    (settings.run_dir / "supervisord.pid").write_text(str(os.getpid()))
    (settings.run_dir / "supervisord.conf").write_text(
        "".join(
            f"[program:{name}]\ncommand=x\n"
            for name in ("postgres", "vna", "orthanc-raw", "orthanc-anon", "dsh", "ehr")
        )
    )
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(local_stack, "supervisorctl", lambda s, *args: calls.append(args))
    monkeypatch.setattr(local_stack, "is_up", lambda s: True)
    monkeypatch.setattr(local_stack.os, "kill", _gone)
    local_stack.down(settings)
    assert calls == [
        ("stop", "orthanc-raw", "orthanc-anon", "ehr"),
        ("stop", "vna", "dsh"),
        ("shutdown",),
    ]


def _gone(pid: int, signal: int) -> None:
    raise ProcessLookupError
