"""A check-in's download offer is written off its path (server/offer_writer.py), and nothing is lost by it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import requests

from tests.server.test_api import bearer, rollout_to, upload
from tests.support.net import wait_until
from tests.support.server import RunningServer


def stored_offer(db: Path, device_id: str) -> object:
    with sqlite3.connect(db, timeout=5) as conn:
        row = conn.execute("SELECT offered FROM devices WHERE id = ?", (device_id,)).fetchone()
    return json.loads(row[0]) if row and row[0] is not None else None


def test_a_check_in_and_its_download_answer_while_another_writer_holds_the_database(
        server: RunningServer, onnx_files: tuple[Path, Path]) -> None:
    """SQLite has one writer at a time. A check-in that brings a new manifest used to write its offer in its own
    transaction, so it waited for whichever batch held the lock (seconds during a wave); now it answers without
    the lock, the download it allows is judged against the manifest of now, and the offer is stored once the
    lock is free."""
    sha = upload(server, "offer", onnx_files[0]).json()["sha256"]
    token = server.enroll("offer-1")
    rollout_to(server, "offer", 1, ["offer-1"])
    db = server.workdir / "edgefleet.db"
    written_before = server.metric("edgefleet_offers_written_total")
    holder = sqlite3.connect(db, timeout=0, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, as a long batch holds it
    try:
        got = requests.get(f"{server.url}/v1/devices/offer-1/manifest", headers=bearer(token), timeout=8)
        assert got.status_code == 200, got.text
        assert got.json()["manifest"]["artifact"]["sha256"] == sha
        download = requests.get(f"{server.url}/v1/artifacts/{sha}", headers=bearer(token), timeout=8)
        assert download.status_code == 200 and download.content == onnx_files[0].read_bytes()
        row = holder.execute("SELECT offered FROM devices WHERE id = 'offer-1'").fetchone()
        assert row[0] is None  # still queued behind the lock
        assert server.metric("edgefleet_offer_queue_depth") >= 1
        other = requests.get(f"{server.url}/v1/artifacts/{'0' * 64}", headers=bearer(token), timeout=8)
        assert other.status_code == 403 and "not offered to device offer-1" in other.json()["detail"]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    wait_until(lambda: stored_offer(db, "offer-1") == {"artifact": sha, "delta": None}, timeout=15)
    again = requests.get(f"{server.url}/v1/artifacts/{sha}", headers=bearer(token), timeout=8)
    assert again.status_code == 200
    assert server.metric("edgefleet_offers_written_total") > written_before
    assert server.metric("edgefleet_offer_queue_depth") == 0 and server.metric("edgefleet_offers_failed_total") == 0
