"""Regression: a burst of concurrent requests that use the database must not deadlock the server.

With more requests in flight than database connections, request threads used to wait for a
connection while the requests holding connections waited for a thread to commit (found by the
fleet simulator: 64 concurrent enrollments all timed out).
"""

from __future__ import annotations

import asyncio

import httpx

from tests.support.server import RunningServer


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
