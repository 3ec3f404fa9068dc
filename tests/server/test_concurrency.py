"""Regression: a burst of concurrent requests that use the database must not deadlock the server.

With more requests in flight than database connections, request threads used to wait for a
connection while the requests holding connections waited for a thread to commit (found by the
fleet simulator: 64 concurrent enrollments all timed out).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.support.server import RunningServer, start_server


def test_enrollment_burst_beyond_pool_and_thread_limits(server: RunningServer) -> None:
    async def burst() -> list[int | str]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(limits=limits, timeout=15) as client:
            async def enroll(index: int) -> int | str:
                try:
                    response = await client.post(server.url + "/v1/enroll", json={
                        "device_id": f"burst-{index}", "enrollment_token": server.enrollment_token})
                    return response.status_code
                except httpx.HTTPError as exc:
                    return type(exc).__name__
            return await asyncio.gather(*(enroll(i) for i in range(120)))

    results = asyncio.run(burst())
    assert results == [200] * 120
    listed = httpx.get(server.url + "/v1/devices", headers=server.admin(), timeout=10).json()
    devices = listed if isinstance(listed, list) else listed["devices"]
    assert {f"burst-{i}" for i in range(120)} <= {d["device_id"] for d in devices}


def test_report_burst_is_group_committed_and_each_answer_is_its_own(server: RunningServer) -> None:
    """More update reports in flight than HTTP threads: each is committed and acknowledged (or refused for
    its own token) and they share transactions, so they do not hold the threads check-ins need."""
    tokens = {f"rep-{i}": server.enroll(f"rep-{i}") for i in range(40)}

    written_before = server.metric("edgefleet_reports_written_total")
    batches_before = server.metric("edgefleet_report_batches_total")

    async def burst() -> list[tuple[str, int, int]]:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=100), timeout=30) as client:
            async def send(device: str, index: int, token: str) -> tuple[str, int, int]:
                response = await client.post(f"{server.url}/v1/devices/{device}/reports", json={
                    "state": "downloading", "model": "m", "version": 1, "reason": f"step {index}"},
                    headers={"Authorization": f"Bearer {token}"})
                return device, index, response.status_code
            sends = [send(device, index, token) for index in range(5) for device, token in tokens.items()]
            sends += [send("rep-0", 99, "not-a-token"), send("rep-1", 99, tokens["rep-2"])]
            return await asyncio.gather(*sends)

    results = asyncio.run(burst())
    assert sorted(status for _, index, status in results if index < 99) == [204] * 200
    assert {(device, status) for device, index, status in results if index == 99} == {("rep-0", 401), ("rep-1", 403)}
    written = server.metric("edgefleet_reports_written_total") - written_before
    batches = server.metric("edgefleet_report_batches_total") - batches_before
    assert written == 200 and 1 <= batches < written  # refused tokens are answered from the same transactions
    device = httpx.get(server.url + "/v1/devices/rep-7", headers=server.admin(), timeout=10).json()
    assert device["update_state"] == "downloading" and device["last_seen"] is not None


def test_download_and_checkin_burst_with_every_pool_connection_taken(tmp_path: Path) -> None:
    """Downloads (each with a database transaction) and check-ins from many devices at once, more than the
    server has threads and connections: every one is answered. The check-in's hot path used to wait for a pool
    connection on the event loop, while the connections were held by request sessions only the event loop could
    close (found by the fleet simulator with one connection per device: the server stopped answering)."""
    server = start_server(tmp_path, overrides={"http_threads": 2})
    try:
        tokens = {f"dl-{i}": server.enroll(f"dl-{i}") for i in range(30)}

        async def burst() -> list[int | str]:
            async with httpx.AsyncClient(limits=httpx.Limits(max_connections=300), timeout=60) as client:
                async def get(path: str, token: str) -> int | str:
                    try:
                        response = await client.get(server.url + path, headers={"Authorization": f"Bearer {token}"})
                        return response.status_code
                    except httpx.HTTPError as exc:
                        return type(exc).__name__
                calls = [get(f"/v1/artifacts/{'ab' * 32}" if k % 2 else f"/v1/devices/{device}/manifest", token)
                         for k in range(10) for device, token in tokens.items()]
                return await asyncio.gather(*calls)

        results = asyncio.run(burst())
        # nothing offered yet: each download is refused after its transaction, each check-in has no desired state
        assert sorted(results, key=str) == sorted([403] * 150 + [204] * 150, key=str)
    finally:
        server.stop()
