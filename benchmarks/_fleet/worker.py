"""A worker process: runs a slice of the fleet on one asyncio loop and reports to the coordinator.

Messages on ``out``: ``("progress", index, dict)`` about once a second, ``("final", index, dict)`` at
the end, ``("crash", index, text)`` when the worker fails.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing.synchronize
import resource
import time
import traceback
from multiprocessing.queues import Queue
from typing import Any

from edgefleet.agent.signing import parse_public_key

from .device import FleetSpec, VirtualDevice
from .http import HttpPool
from .stats import WorkerStats


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (10,000 MQTT sockets need it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def _lag_probe(stats: WorkerStats, period: float = 0.1) -> None:
    """How late the loop wakes a 100 ms sleeper: the simulator's own saturation signal."""
    while True:
        expected = time.perf_counter() + period
        await asyncio.sleep(period)
        stats.loop_lag_ms.append(max(0.0, (time.perf_counter() - expected) * 1000))


async def _run(index: int, spec: FleetSpec, device_ids: list[str], stop_flag: Any, out: Queue[Any],
               http_connections: int, connect_concurrency: int) -> None:
    stats = WorkerStats()
    # 0: every device its own connection, as a real device has (opened for a check-in and what follows it,
    # closed after); N: N keep-alive connections shared by the worker's devices
    shared = HttpPool(spec.server_url, size=http_connections) if http_connections > 0 else None
    key = parse_public_key(spec.public_key_pem, "server public key")
    stop = asyncio.Event()
    slots = asyncio.Semaphore(connect_concurrency)
    devices = [VirtualDevice(d, spec, shared or HttpPool(spec.server_url, size=1), key, stats, own_http=shared is None)
               for d in device_ids]
    lag = asyncio.create_task(_lag_probe(stats))
    # the server stalls under more than about 20 concurrent enrollments (see docs/fleet-sim.md)
    enroll_slots = asyncio.Semaphore(8)
    tasks = [asyncio.create_task(d.run(stop, slots, enroll_slots)) for d in devices]
    while not stop_flag.is_set():
        out.put(("progress", index, stats.progress()))
        failed = [t for t in tasks if t.done() and t.exception() is not None]
        for task in failed:
            exc = task.exception()
            stats.error("device", f"{type(exc).__name__}: {exc}")
            tasks.remove(task)
        await asyncio.sleep(1.0)
    stop.set()
    _done, pending = await asyncio.wait(tasks, timeout=15) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    lag.cancel()
    for pool in {id(d.http): d.http for d in devices}.values():
        await pool.close()
    out.put(("final", index, stats.final()))


def worker_main(index: int, spec: FleetSpec, device_ids: list[str], stop_flag: multiprocessing.synchronize.Event,
                out: Queue[Any], http_connections: int = 0, connect_concurrency: int = 100) -> None:
    raise_nofile()
    logging.basicConfig(level=logging.WARNING)
    try:
        asyncio.run(_run(index, spec, device_ids, stop_flag, out, http_connections, connect_concurrency))
    except BaseException:
        out.put(("crash", index, traceback.format_exc()))
        raise
