"""Work on untrusted model files in a child process with a time, CPU and memory limit.

An uploaded model is arbitrary input: an ONNX ``Loop`` with a trip count of 10^15 runs for ever, a graph
can allocate without bound, a runtime can crash. None of that may take a server thread or the server
process with it, so inspection, profiling, variant builds and bsdiff run in ``python -m
server.sandbox_child TASK`` (as the agent test-loads in ``agent/ota/probe_load.py``): the child sets its
own ``RLIMIT_AS`` and ``RLIMIT_CPU`` before it imports a runtime, the parent kills its process group at
the wall-clock deadline, and ``kill_all()`` (called when the server shuts down) ends every child still
running so SIGTERM stops the server promptly.

Protocol: the arguments are one JSON document on the child's stdin; the child writes JSON lines on its
stdout: ``{"progress": f, "message": m}`` any number of times, then ``{"result": {...}}`` or
``{"error": "<one line>", "kind": "..."}``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.agent.errors import EdgefleetError

REPO_ROOT = Path(__file__).resolve().parents[1]
STDERR_TAIL = 2000


@dataclass(frozen=True)
class Limits:
    timeout_s: float  # wall clock
    cpu_s: float  # CPU time of the child (all its threads)
    memory_mb: int  # address space


class SandboxError(EdgefleetError):
    """The child failed: ``kind`` is timeout | cpu | memory | crashed | refused (the task's own error) |
    shutdown (killed because the server is stopping)."""

    def __init__(self, message: str, kind: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.detail = detail  # the task's own error class, e.g. not_a_model


_children: set[subprocess.Popen[bytes]] = set()
_children_lock = threading.Lock()
_closing = threading.Event()


def kill_all() -> int:
    """Kill every running child (server shutdown); later calls to ``run`` fail at once. Returns how many."""
    _closing.set()
    with _children_lock:
        running = list(_children)
    for proc in running:
        _kill(proc)
    return len(running)


def reopen() -> None:
    """Allow children again (a new app in the same process, as tests make)."""
    _closing.clear()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    return env


def run(task: str, args: dict[str, Any], limits: Limits,
        progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    """Run ``task`` in a bounded child; its result, or SandboxError with a one-line reason."""
    if _closing.is_set():
        raise SandboxError("the server is shutting down", "shutdown")
    command = [sys.executable, "-m", "edgefleet.server.sandbox_child", task, "--cpu-s", str(limits.cpu_s),
               "--memory-mb", str(limits.memory_mb)]
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                                env=_environment(), cwd=REPO_ROOT, start_new_session=True)
        with _children_lock:
            _children.add(proc)
        try:
            outcome, late = _converse(proc, args, limits, progress)
        finally:
            _kill(proc)
            proc.wait()
            with _children_lock:
                _children.discard(proc)
        stderr.seek(0)
        tail = stderr.read()[-STDERR_TAIL:].decode("utf-8", errors="replace")
    if _closing.is_set() and (late or proc.returncode != 0):  # killed by kill_all()
        raise SandboxError("stopped: the server is shutting down", "shutdown")
    if late:
        raise SandboxError(f"did not finish within {limits.timeout_s:g}s", "timeout")
    return _judge(proc.returncode, outcome, tail, limits)


def _converse(proc: subprocess.Popen[bytes], args: dict[str, Any], limits: Limits,
              progress: Callable[[float, str], None] | None) -> tuple[dict[str, Any] | None, bool]:
    """Send the arguments and relay progress; (the final line or None, whether the deadline passed first)."""
    assert proc.stdin is not None and proc.stdout is not None
    final: list[dict[str, Any]] = []

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(line, dict):
                continue
            if "progress" in line:
                if progress is not None:
                    try:
                        progress(float(line["progress"]), str(line.get("message", "")))
                    except Exception:  # a progress callback never fails the task
                        pass
            else:
                final[:] = [line]

    reader = threading.Thread(target=read, name="sandbox-reader", daemon=True)
    reader.start()
    try:
        proc.stdin.write(json.dumps(args).encode())
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the child died at once: its exit status says why
    deadline = time.monotonic() + limits.timeout_s
    while reader.is_alive():
        if _closing.is_set() or time.monotonic() >= deadline:
            return None, True
        reader.join(timeout=0.1)
    proc.wait()
    return (final[0] if final else None), False


def _judge(returncode: int, outcome: dict[str, Any] | None, stderr_tail: str, limits: Limits) -> dict[str, Any]:
    if outcome is not None and "result" in outcome and returncode == 0:
        result = outcome["result"]
        return result if isinstance(result, dict) else {"value": result}
    if outcome is not None and "error" in outcome:
        kind = str(outcome.get("kind") or "refused")
        message = str(outcome["error"]).splitlines()[0] if outcome["error"] else "failed"
        if kind == "memory":
            raise SandboxError(f"needed more than {limits.memory_mb} MB of memory ({message})", "memory")
        raise SandboxError(message, "refused", detail=kind)
    if returncode == -signal.SIGXCPU:  # RLIMIT_CPU's soft limit
        raise SandboxError(f"used more than {limits.cpu_s:g}s of CPU time", "cpu")
    if returncode == -signal.SIGKILL:  # RLIMIT_CPU's hard limit, or the kernel's OOM killer
        raise SandboxError(f"was killed past its limits ({limits.cpu_s:g}s CPU, {limits.memory_mb} MB)", "cpu")
    lines = [line for line in stderr_tail.strip().splitlines() if line.strip()]
    if "MemoryError" in stderr_tail or "bad_alloc" in stderr_tail:
        raise SandboxError(f"needed more than {limits.memory_mb} MB of memory", "memory")
    if returncode < 0:
        raise SandboxError(f"crashed the runtime (signal {-returncode})", "crashed")
    raise SandboxError(f"failed ({lines[-1][:300]})" if lines else f"exited with {returncode}", "crashed")
