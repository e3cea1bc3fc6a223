"""orthanc-raw's fetch worker against a stand-in Orthanc (with a VNA behind it) and a real
Postgres: what it asks the VNA, what it hands to orthanc-anon, and what it records."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest

from pixl_core.db import fetch_control, work_queue
from pixl_core.dicom.handoff import Handoff, read_bytes
from pixl_imaging.fetch_worker import RawWorker, RawWorkerSettings
from stack.synthetic.cohort import (
    MISSING_FROM_VNA,
    NO_REPORT,
    NORMAL,
    SHARED,
    WRONG_MODALITY,
    Cohort,
    SyntheticStudy,
)
from tests.integration.imaging_fakes import (
    SECRET,
    FakeOrthanc,
    add_study,
    seconds_until,
    study_row,
)

PROJECT = "chest-xray"


class Imaging:
    """The VNA, orthanc-raw and orthanc-anon stand-ins, and a fetch worker between them."""

    def __init__(self, db_url: str, cohort: Cohort, **settings: object) -> None:
        self.vna = FakeOrthanc("vna")
        for study in cohort.studies:
            if study.in_vna:
                self.vna.load(study.files)
        self.raw = FakeOrthanc("raw", vna=self.vna)
        self.anon = FakeOrthanc("anon")
        options = {"worker_id": "raw:test", "poll_seconds": 0.05, **settings}
        self.worker = RawWorker(
            db_url,
            self.raw,
            self.anon,
            SECRET,
            RawWorkerSettings(**options),  # type: ignore[arg-type]
        )

    def fetch_one(self, conn) -> None:  # type: ignore[no-untyped-def]
        """Claim the next study as the worker's loop would, and fetch it."""
        (item,) = work_queue.claim(conn, "study", "raw:test", 1, 60, max_attempts=5)
        self.worker.process(item)


@pytest.fixture
def imaging(db_url: str, cohort: Cohort) -> Iterator[Imaging]:
    yield Imaging(db_url, cohort)


def queue(conn, study: SyntheticStudy, project: str = PROJECT) -> int:  # type: ignore[no-untyped-def]
    return add_study(conn, project, study.mrn, study.accession_number)


def vna_moves(conn) -> list[tuple[int, str, int]]:  # type: ignore[no-untyped-def]
    with conn, conn.cursor() as cur:
        cur.execute("SELECT study_id, outcome, instance_count FROM vna_move ORDER BY id")
        return cur.fetchall()


def test_study_in_the_vna_is_moved_once_and_handed_off_signed(imaging, conn, cohort):
    study = cohort.by_role(NORMAL)
    study_id = queue(conn, study)

    imaging.fetch_one(conn)

    row = study_row(conn, study_id)
    assert (row["state"], row["study_uid"], row["instances_sent"], row["claimed_by"]) == (
        "anonymising",
        study.study_uid,
        len(study.files),
        None,
    )
    assert imaging.raw.moves == ["study"]
    assert vna_moves(conn) == [(study_id, "completed", len(study.files))]
    handed = imaging.anon.of_study(study.study_uid)
    assert sorted(i.sop_uid for i in handed) == sorted(study.sop_instance_uids)
    for instance in handed:  # each carries the signed note of its project and work item
        assert read_bytes(instance.data, SECRET)[0] == Handoff(PROJECT, study_id)
    counters = imaging.worker.counters.snapshot()
    assert counters["moves"] == 1 and counters["handed_off"] == 1
    assert counters["instances_sent"] == len(study.files) and counters["in_flight"] == 0


def test_cached_study_is_handed_off_without_a_move(imaging, conn, cohort):
    study = cohort.by_role(NORMAL)
    imaging.raw.load(study.files)  # orthanc-raw still holds it from earlier
    study_id = queue(conn, study)

    imaging.fetch_one(conn)

    assert study_row(conn, study_id)["state"] == "anonymising"
    assert imaging.raw.moves == []
    assert vna_moves(conn) == []
    assert len(imaging.anon.of_study(study.study_uid)) == len(study.files)
    assert imaging.worker.counters["cached"] == 1


def test_study_asked_for_by_two_projects_is_moved_once(imaging, conn, cohort):
    study = cohort.by_role(SHARED)
    first = queue(conn, study, "chest-xray")
    second = queue(conn, study, "chest-xray-research")

    imaging.fetch_one(conn)
    imaging.fetch_one(conn)

    assert imaging.raw.moves == ["study"]  # the second project's copy came from the cache
    assert vna_moves(conn) == [(first, "completed", len(study.files))]
    assert {study_row(conn, first)["state"], study_row(conn, second)["state"]} == {"anonymising"}
    # both projects' copies went to orthanc-anon, each signed for its own work item
    notes = [read_bytes(data, SECRET)[0] for data in imaging.anon.posted]
    assert sorted(notes, key=lambda n: n.work_item_id) == (
        [Handoff("chest-xray", first)] * len(study.files)
        + [Handoff("chest-xray-research", second)] * len(study.files)
    )


def test_study_missing_from_the_vna_ends_not_found_without_a_move(imaging, conn, cohort):
    study_id = queue(conn, cohort.by_role(MISSING_FROM_VNA))

    imaging.fetch_one(conn)

    row = study_row(conn, study_id)
    assert (row["state"], row["last_error_code"], row["claimed_by"]) == ("not_found", None, None)
    assert imaging.raw.moves == [] and imaging.anon.instances == {}


def test_wrong_modality_is_refused_without_a_move(imaging, conn, cohort):
    study = cohort.by_role(WRONG_MODALITY)
    study_id = queue(conn, study)

    imaging.fetch_one(conn)

    row = study_row(conn, study_id)
    assert (row["state"], row["last_error_code"], row["study_uid"]) == (
        "refused",
        "modality_not_allowed",
        study.study_uid,
    )
    assert imaging.raw.moves == [] and imaging.anon.instances == {}


def test_vna_down_sends_the_study_back_without_using_a_try_and_pauses(imaging, conn, cohort):
    """Fault F5: the VNA does not answer even a C-ECHO, so the study is not at fault: it goes
    back to the queue due now, its try not counted, and the worker stops claiming."""
    study = cohort.by_role(NORMAL)
    study_id = queue(conn, study)
    imaging.vna.down = True

    imaging.fetch_one(conn)

    row = study_row(conn, study_id)
    assert (row["state"], row["attempts"], row["last_error_code"]) == (
        "queued",
        0,
        "vna_unreachable",
    )
    assert seconds_until(conn, study_id, "next_attempt_at") <= 0
    assert imaging.worker.counters["vna_unreachable"] == 1
    assert imaging.worker.counters["vna_reachable"] == 0
    assert imaging.worker.counters["retried"] == 0


def test_a_query_that_fails_while_the_vna_answers_costs_a_try(imaging, conn, cohort):
    """A C-FIND failure with the VNA answering a C-ECHO is this study's failure: it backs off."""
    study = cohort.by_role(NORMAL)
    study_id = queue(conn, study)
    imaging.vna.refuse_queries = True

    imaging.fetch_one(conn)

    row = study_row(conn, study_id)
    assert (row["state"], row["attempts"], row["last_error_code"]) == (
        "queued",
        1,
        "orthanc_http_500",
    )
    assert seconds_until(conn, study_id, "next_attempt_at") == pytest.approx(10, abs=2)
    assert study.mrn not in row["last_error_code"]
    assert imaging.worker.counters["retried"] == 1
    assert imaging.worker.counters["vna_reachable"] == 1


def test_a_long_vna_outage_fails_nothing_and_work_resumes_when_it_answers(db_url, conn, cohort):
    """However long the VNA is away, the worker probes it instead of burning the studies'
    tries (5 tries at 10 s backoff used to fail them after ~2.5 min), and resumes on its own."""
    imaging = Imaging(db_url, cohort, vna_probe_seconds=0.2, backoff_base_seconds=0.01)
    work_queue.set_fetch_rate(conn, "*", 100.0, 4)
    ids = [queue(conn, cohort.by_role(role)) for role in (NORMAL, SHARED, NO_REPORT)]
    imaging.vna.down = True
    stop = threading.Event()
    thread = threading.Thread(target=imaging.worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        _wait(lambda: imaging.worker.counters["vna_reachable"] == 0)
        time.sleep(2.0)  # ten probe periods; a worker burning tries would fail every study
        assert "failed" not in _states(conn)
        assert [study_row(conn, i)["attempts"] for i in ids] == [0, 0, 0]
        probes = imaging.raw.echoes
        assert 5 <= probes <= 20, probes  # about one C-ECHO per probe period, not a busy loop
        imaging.vna.down = False
        _wait(lambda: _states(conn) == ["anonymising"] * 3)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert imaging.worker.counters["vna_reachable"] == 1
    assert [study_row(conn, i)["attempts"] for i in ids] == [1, 1, 1]


@pytest.mark.parametrize(
    ("project", "code"),
    [
        ("broken-allowlist", "invalid_allowlist"),
        ("broken-project", "invalid_project"),
        ("nowhere", "unknown_project"),
    ],
)
def test_configuration_error_is_recorded_as_what_it_is(
    imaging, conn, cohort, broken_config, project, code
):
    study_id = queue(conn, cohort.by_role(NORMAL), project)

    imaging.fetch_one(conn)

    row = study_row(conn, study_id)
    assert (row["state"], row["last_error_code"]) == ("failed", code)
    assert imaging.raw.moves == []


def _wait(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _states(conn) -> list[str]:  # type: ignore[no-untyped-def]
    with conn, conn.cursor() as cur:
        cur.execute("SELECT state FROM study ORDER BY id")
        return [state for (state,) in cur.fetchall()]


def test_loop_keeps_no_more_than_the_in_flight_limit_fetching(imaging, conn, cohort):
    work_queue.set_fetch_rate(conn, "*", 100.0, 2)
    for role in (NORMAL, SHARED, NO_REPORT):
        queue(conn, cohort.by_role(role))
    imaging.raw.gate = threading.Event()  # moves wait until the gate opens
    stop = threading.Event()
    thread = threading.Thread(target=imaging.worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        _wait(lambda: _states(conn).count("fetching") == 2)
        time.sleep(0.5)  # many rate slots pass; the limit holds
        assert sorted(_states(conn)) == ["fetching", "fetching", "queued"]
        imaging.raw.gate.set()
        _wait(lambda: _states(conn) == ["anonymising"] * 3)
    finally:
        stop.set()
        imaging.raw.gate.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert imaging.worker.counters["in_flight"] == 0


def test_a_study_being_handed_on_is_off_the_in_flight_limit(imaging, conn, cohort):
    """The limit is of studies being asked of the VNA: while orthanc-anon takes its time over
    one study's hand-off, the next is asked for, and at most as many again are handed on."""
    work_queue.set_fetch_rate(conn, "*", 100.0, 1)
    for role in (NORMAL, SHARED, NO_REPORT):
        queue(conn, cohort.by_role(role))
    anon_gate = threading.Event()

    def slow_anon(data: bytes) -> bytes:
        anon_gate.wait(30)
        return data

    imaging.anon.on_received = slow_anon
    stop = threading.Event()
    thread = threading.Thread(target=imaging.worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        _wait(lambda: _fetched(conn) == [True, True, False])
        time.sleep(0.5)  # many rate slots pass: two hand-offs at most with a limit of one
        assert _states(conn) == ["fetching", "fetching", "queued"]
        assert _fetched(conn) == [True, True, False]
        assert work_queue.in_progress_on_cap(conn, "study") == 0
        anon_gate.set()
        _wait(lambda: _states(conn) == ["anonymising"] * 3)
    finally:
        stop.set()
        anon_gate.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert imaging.vna.moves_served == 3


def _fetched(conn) -> list[bool]:  # type: ignore[no-untyped-def]
    with conn, conn.cursor() as cur:
        cur.execute("SELECT fetched_at IS NOT NULL FROM study ORDER BY id")
        return [fetched for (fetched,) in cur.fetchall()]


def test_loop_claims_one_study_per_rate_slot(imaging, conn, cohort):
    work_queue.set_fetch_rate(conn, "*", 0.5, 4)  # one study every 2 s
    for role in (NORMAL, SHARED):
        queue(conn, cohort.by_role(role))
    stop = threading.Event()
    thread = threading.Thread(target=imaging.worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        _wait(lambda: "queued" not in _states(conn)[:1])
        first = time.monotonic()
        time.sleep(0.5)
        assert _states(conn)[1] == "queued"
        _wait(lambda: "queued" not in _states(conn))
        second = time.monotonic()
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert second - first >= 1.5


def test_a_project_rate_holds_that_project_to_it(imaging, conn, cohort):
    """Fault F6: `pixl rate --project P` is honoured: P's studies are claimed at P's own rate
    while the other project's go at the global one."""
    work_queue.set_fetch_rate(conn, "*", 100.0, 4)
    work_queue.set_fetch_rate(conn, "slow-project", 0.5, 1)  # one study every 2 s
    slow = [
        add_study(conn, "slow-project", study.mrn, study.accession_number)
        for study in (cohort.by_role(NORMAL), cohort.by_role(SHARED))
    ]
    fast = [queue(conn, cohort.by_role(role)) for role in (NORMAL, SHARED, NO_REPORT)]
    claimed_at: dict[int, float] = {}
    original = imaging.worker.process

    def timed(item) -> None:  # type: ignore[no-untyped-def]
        claimed_at[item.id] = time.monotonic()
        original(item)  # slow-project has no project file: it ends failed, which is fine here

    imaging.worker.process = timed  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=imaging.worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        _wait(lambda: set(claimed_at) >= set(slow) | set(fast))
    finally:
        stop.set()
        thread.join(timeout=10)
    assert abs(claimed_at[slow[1]] - claimed_at[slow[0]]) >= 1.5
    assert max(claimed_at[i] for i in fast) - min(claimed_at[i] for i in fast) < 1.0


def _run_worker(imaging: Imaging, seconds: float) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=imaging.worker.run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_a_pause_of_all_asking_claims_nothing_and_the_queue_stays_queued(imaging, conn, cohort):
    """`pixl pause`: the worker claims nothing, asks the VNA nothing, and the studies stay
    queued with no try used; `pixl resume` lets them through."""
    work_queue.set_fetch_rate(conn, "*", 100.0, 4)
    ids = [queue(conn, cohort.by_role(role)) for role in (NORMAL, SHARED)]
    fetch_control.set_paused(conn, "*", True, "alice")
    _run_worker(imaging, 1.5)
    assert _states(conn) == ["queued", "queued"]
    assert [study_row(conn, i)["attempts"] for i in ids] == [0, 0]
    assert vna_moves(conn) == [] and imaging.raw.moves == []
    assert imaging.worker.counters["paused"] == 1
    fetch_control.set_paused(conn, "*", False, "alice")
    _run_worker(imaging, 3)
    assert _states(conn) == ["anonymising", "anonymising"]
    assert imaging.worker.counters["paused"] == 0


def test_a_paused_project_is_held_while_the_others_are_fetched(imaging, conn, cohort):
    work_queue.set_fetch_rate(conn, "*", 100.0, 4)
    held = add_study(conn, "other-project", cohort.by_role(NORMAL).mrn, "OTHERACC")
    fetched = queue(conn, cohort.by_role(SHARED))
    fetch_control.set_paused(conn, "other-project", True, "alice")
    _run_worker(imaging, 2)
    assert study_row(conn, held)["state"] == "queued"
    assert study_row(conn, held)["attempts"] == 0
    assert study_row(conn, fetched)["state"] == "anonymising"


def test_outside_the_vna_hours_nothing_is_claimed(imaging, conn, cohort, monkeypatch):
    work_queue.set_fetch_rate(conn, "*", 100.0, 4)
    queue(conn, cohort.by_role(NORMAL))
    now = fetch_control.now_local()
    # A one-minute window that opened two hours ago: closed now, whatever the time.
    start = (now - timedelta(hours=2)).strftime("%H:%M")
    end = (now - timedelta(hours=2) + timedelta(minutes=1)).strftime("%H:%M")
    fetch_control.set_hours(conn, "*", fetch_control.HoursWindow.parse(f"{start}-{end}"))
    _run_worker(imaging, 1.5)
    assert _states(conn) == ["queued"]
    assert imaging.worker.counters["outside_hours"] == 1
    fetch_control.set_hours(conn, "*", None)
    _run_worker(imaging, 2)
    assert _states(conn) == ["anonymising"]


def test_higher_priority_is_claimed_first(conn, cohort):
    low = queue(conn, cohort.by_role(NORMAL))
    high = queue(conn, cohort.by_role(SHARED))
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE study SET priority = 5 WHERE id = %s", (high,))
    (first,) = work_queue.claim(conn, "study", "raw:test", 1, 60)
    (second,) = work_queue.claim(conn, "study", "raw:test", 1, 60)
    assert (first.id, second.id) == (high, low)


def gated_replicas(db_url: str, cohort: Cohort) -> tuple[list[Imaging], threading.Event]:
    """Two orthanc-raw replicas over one Postgres whose moves wait until the gate opens."""
    replicas = [Imaging(db_url, cohort, worker_id=f"raw:replica{n}") for n in (1, 2)]
    gate = threading.Event()
    for replica in replicas:
        replica.raw.gate = gate
    return replicas, gate


def test_two_replicas_keep_the_in_flight_limit_together(db_url, conn, cohort):
    """Issue 12: the '*' in-flight limit is of all orthanc-raw replicas, not of each."""
    work_queue.set_fetch_rate(conn, "*", 100.0, 2)
    for role in (NORMAL, SHARED, NO_REPORT):
        queue(conn, cohort.by_role(role))
    replicas, gate = gated_replicas(db_url, cohort)
    stop = threading.Event()
    threads = [threading.Thread(target=r.worker.run, args=(stop,), daemon=True) for r in replicas]
    for thread in threads:
        thread.start()
    try:
        _wait(lambda: _states(conn).count("fetching") >= 2)
        time.sleep(0.5)  # many rate slots and polls pass; the limit holds across both
        assert sorted(_states(conn)) == ["fetching", "fetching", "queued"]
        gate.set()
        _wait(lambda: _states(conn) == ["anonymising"] * 3)
    finally:
        stop.set()
        gate.set()
        for thread in threads:
            thread.join(timeout=10)


def _run_replicas(replicas: list[Imaging], until: Callable[[], bool]) -> None:
    stop = threading.Event()
    threads = [threading.Thread(target=r.worker.run, args=(stop,), daemon=True) for r in replicas]
    for thread in threads:
        thread.start()
    try:
        _wait(until)
    finally:
        stop.set()
        for replica in replicas:
            if replica.raw.gate is not None:
                replica.raw.gate.set()
        for thread in threads:
            thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)


def test_two_replicas_keep_a_projects_rate_together(db_url, conn, cohort):
    """Issue 12: `pixl rate --project P` is P's rate over all orthanc-raw replicas: two of them
    claim P's studies one slot apart (2 s), not one each per slot."""
    work_queue.set_fetch_rate(conn, "*", 100.0, 8)
    work_queue.set_fetch_rate(conn, "slow-project", 0.5, 8)  # one study every 2 s
    study = cohort.by_role(NORMAL)
    for n in range(6):
        add_study(conn, "slow-project", study.mrn, f"SLOW{n}")
    claimed_at: list[float] = []
    replicas = [Imaging(db_url, cohort, worker_id=f"raw:replica{n}") for n in (1, 2)]
    for replica in replicas:
        original = replica.worker.process

        def timed(item, original=original) -> None:  # type: ignore[no-untyped-def]
            claimed_at.append(time.monotonic())
            original(item)  # slow-project has no project file: it ends failed, which is fine

        replica.worker.process = timed  # type: ignore[method-assign]
    _run_replicas(replicas, lambda: len(claimed_at) >= 2 and time.monotonic() - claimed_at[0] > 3)
    first = min(claimed_at)
    early = [t for t in claimed_at if t - first < 3.0]
    assert len(early) == 2, [round(t - first, 2) for t in sorted(claimed_at)]  # at 0 s and 2 s
    assert max(early) - first >= 1.5


def test_two_replicas_keep_a_projects_in_flight_limit_together(db_url, conn, cohort):
    """Issue 12: a project's own in-flight limit (1) holds over both replicas, while '*' would
    let more through."""
    work_queue.set_fetch_rate(conn, "*", 100.0, 8)
    work_queue.set_fetch_rate(conn, PROJECT, 100.0, 1)
    for role in (NORMAL, SHARED, NO_REPORT):
        queue(conn, cohort.by_role(role))
    replicas, gate = gated_replicas(db_url, cohort)
    seen: list[list[str]] = []

    def one_fetching_for_a_while() -> bool:
        seen.append(_states(conn))
        if len(seen) > 25:  # 0.5 s of polls and rate slots passed: the limit held
            gate.set()
        return _states(conn) == ["anonymising"] * 3

    _run_replicas(replicas, one_fetching_for_a_while)
    assert max(states.count("fetching") for states in seen) == 1, seen
