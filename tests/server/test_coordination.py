"""What keeps replicas on one PostgreSQL from stepping on each other: migrations under an advisory lock,
leader leases, jobs claimed once (SKIP LOCKED) and failed when their replica dies."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from edgefleet.server.crud import jobs as job_crud
from edgefleet.server.db import Database, head_revision, migrate, schema_revision
from edgefleet.server.db.models import Lease
from edgefleet.server.jobs import JobKind, JobRunner
from edgefleet.server.leases import ROLLOUTS, Leases
from tests.support.databases import database_url, postgres_reason
from tests.support.net import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.skipif(postgres_reason() is not None, reason=str(postgres_reason()))]


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    with database_url("postgresql", tmp_path) as url:
        yield url


@pytest.fixture
def pg(pg_url: str) -> Iterator[Database]:
    db = Database(pg_url)
    migrate(db.engine)
    yield db
    db.dispose()


def test_replicas_starting_together_migrate_once(pg_url: str) -> None:
    engines = [Database(pg_url) for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(engines))

    def boot(db: Database) -> None:
        start.wait()
        try:
            migrate(db.engine)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=boot, args=(db,)) for db in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert schema_revision(engines[0].engine) == head_revision() == "0011"
    for db in engines:
        db.dispose()


def test_one_holder_per_lease_and_a_silent_holder_is_replaced_within_the_ttl(pg: Database) -> None:
    ttl = 1.5
    first, second = Leases(pg, "replica-a", ttl_s=ttl), Leases(pg, "replica-b", ttl_s=ttl)
    first.renew()
    second.renew()
    assert first.held(ROLLOUTS) and not second.held(ROLLOUTS)
    assert first.holding() == {"rollouts": True, "retention": True, "gc": True}
    with pg.session() as session:
        expires = session.get(Lease, ROLLOUTS).expires_at  # type: ignore[union-attr]
        left_in_db = expires - pg.now(session)
        left_here = first._deadline[ROLLOUTS] - time.monotonic()
    # the holder stops acting (about) a fifth of the ttl before the others may take over
    assert 0 < left_here < left_in_db - 0.15 * ttl and left_in_db <= ttl
    first.renew()  # its own lease: extended
    second.renew()
    assert first.held(ROLLOUTS) and not second.held(ROLLOUTS)
    # "replica-a" dies: it renews no more
    died = time.monotonic()
    wait_until(lambda: (second.renew(), second.held(ROLLOUTS))[1], timeout=10, interval=0.1)
    assert time.monotonic() - died < ttl + 1.5
    assert not first.held(ROLLOUTS)
    first.renew()
    assert not first.held(ROLLOUTS)  # back, it follows


def test_a_holder_that_stops_hands_over_at_once(pg: Database) -> None:
    first, second = Leases(pg, "replica-a", ttl_s=60), Leases(pg, "replica-b", ttl_s=60)
    first.start()
    assert first.held(ROLLOUTS)
    first.stop()
    second.renew()
    assert second.held(ROLLOUTS) and not first.held(ROLLOUTS)


def test_each_job_runs_once_whichever_replica_claims_it(pg_url: str) -> None:
    ran: list[tuple[int, str]] = []
    lock = threading.Lock()
    runners = []
    for holder in ("replica-a", "replica-b"):
        db = Database(pg_url)
        migrate(db.engine)
        runner = JobRunner(db, holder=holder, workers=2, poll_s=0.05)

        def work(job_id: int, params: dict[str, Any], _progress: Any, holder: str = holder) -> dict[str, Any]:
            time.sleep(0.05)
            with lock:
                ran.append((job_id, holder))
            return {"n": params["n"]}

        runner.register("count", JobKind(work))
        runners.append(runner)
    submitted = [runners[i % 2].submit(kind="count", params={"n": i}) for i in range(30)]
    for runner in runners:
        runner.start()
    try:
        db = runners[0].db
        wait_until(lambda: _states(db, submitted) == {"succeeded": 30}, timeout=60, interval=0.1)
    finally:
        for runner in runners:
            runner.shutdown()
    assert sorted(job for job, _ in ran) == sorted(submitted)  # every job, once
    assert {holder for _, holder in ran} == {"replica-a", "replica-b"}  # both replicas took part
    with runners[0].db.session() as session:
        results = {job_crud.get_job(session, job_id=j).result["n"] for j in submitted}  # type: ignore[index]
    assert results == set(range(30))
    for runner in runners:
        runner.db.dispose()


def test_a_job_whose_replica_died_is_failed_and_cleaned_up(pg: Database) -> None:
    cleaned: list[tuple[int, str]] = []
    with pg.session() as session:
        job_id = job_crud.create_job(session, kind="build", params={}).id
    with pg.session() as session:  # a replica claims it, then is killed: its claim is never renewed
        assert job_crud.claim_next(session, holder="replica-dead", kinds=("build",), until=pg.now(session) + 0.5)
    survivor = JobRunner(pg, holder="replica-alive", poll_s=0.1)
    survivor.register("build", JobKind(lambda *_: {}, lambda job, _params, reason: cleaned.append((job, reason))))
    survivor.start()
    try:
        wait_until(lambda: _states(pg, [job_id]) == {"failed": 1}, timeout=10, interval=0.1)
    finally:
        survivor.shutdown()
    with pg.session() as session:
        job = job_crud.get_job(session, job_id=job_id)
        assert job.message == "interrupted: replica replica-dead stopped"
    assert cleaned == [(job_id, "interrupted: replica replica-dead stopped")]


def test_a_running_job_keeps_its_claim_past_the_ttl(pg: Database) -> None:
    release = threading.Event()
    runner = JobRunner(pg, holder="replica-a", claim_ttl_s=2.0, poll_s=0.1)
    runner.register("slow", JobKind(lambda *_: (release.wait(20), {"ok": True})[1]))
    other = JobRunner(pg, holder="replica-b", claim_ttl_s=2.0, poll_s=0.1)  # reaps expired claims
    other.register("slow", JobKind(lambda *_: {}))
    job_id = runner.submit(kind="slow", params={})
    runner.start()
    try:
        # replica-b starts once replica-a holds the job: it could otherwise claim it first and run its own
        # handler (a race the suite's load once showed), and what is under test is a claim held past its ttl
        wait_until(lambda: _states(pg, [job_id]) == {"running": 1}, timeout=10, interval=0.05)
        other.start()
        time.sleep(5.0)  # more than twice the claim's ttl: renewed, so nobody fails it
        assert _states(pg, [job_id]) == {"running": 1}
        release.set()
        wait_until(lambda: _states(pg, [job_id]) == {"succeeded": 1}, timeout=10, interval=0.1)
    finally:
        release.set()
        runner.shutdown()
        other.shutdown()


def test_rollout_writes_take_turns_across_connections(pg: Database, pg_url: str) -> None:
    from edgefleet.server.rollouts import rollout_writes

    other = Database(pg_url)
    order: list[str] = []
    inside = threading.Event()

    def second() -> None:
        inside.wait(5)
        with rollout_writes(other):
            order.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    with rollout_writes(pg) as session:
        session.execute(text("SELECT 1"))
        inside.set()
        time.sleep(0.5)  # the other "replica" waits for the advisory lock meanwhile
        order.append("first")
    thread.join(10)
    assert order == ["first", "second"]
    other.dispose()


def _states(db: Database, job_ids: list[int]) -> dict[str, int]:
    with db.session() as session:
        return dict(Counter(job_crud.get_job(session, job_id=j).state for j in job_ids))
