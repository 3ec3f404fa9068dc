"""The power-cut loop shared by tests/reliability/test_power_cut.py and benchmarks/power_cut.py.

One real agent (``edgefleet-agent run``: synthetic source, local API, MQTT telemetry, OTA client) runs
against the real server and Mosquitto. Each cycle pushes a new model version, rolls it out to the agent
and ``kill -9``s the agent (its whole process group, so a running test-load dies with it) at a random
instant of the update. Then, with the agent dead, the state directory must be consistent; after a
restart the agent must serve (``/v1/infer`` answers with the exact outputs of the model it names) a
model whose sha256 is the previous or the new version's; and the update must end committed (serving the
new version) or rolled back / failed (serving the previous one).

Every version carries two padding tensors besides its classifier (tests/support/models.py
``make_onnx_padded_classifier``); on even cycles the second one is fine-tuned (every value moved by 1e-3),
so the server offers an exact tensor delta and the kills land in its download and rebuild too; on odd
cycles only the classifier's few bytes change (a bsdiff4 delta).

Instants are random (the benchmark's long runs), or aimed (``aim=PHASES``, the test): each cycle picks a
phase of the update this device has not been cut in yet, waits until state.json enters it and cuts at a
random instant of it (bounded by how long that phase has lasted so far), until every phase is covered.
"""

from __future__ import annotations

import collections
import functools
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests

from tests.reliability.support import (
    TERMINAL,
    DaemonAgent,
    Versions,
    agent_yaml,
    api_port,
    assert_exact_outputs,
    check_state_files,
)
from tests.support.models import make_onnx_padded_classifier
from tests.support.net import wait_until
from tests.support.server import RunningServer

BEFORE = "before"  # the agent has not saved the new target yet (killed around the poll that sees it)
PHASES = (BEFORE, "downloading", "verifying", "installing", "trial")


def phase_of(state: str) -> str:
    """The phase a cut landed in, from the state saved at the kill (a terminal state: before the update)."""
    return state if state in PHASES else BEFORE


@dataclass
class PowerCutReport:
    seed: int
    cycles: int = 0
    committed: int = 0  # the update finished: the new version serves
    rolled_back: int = 0  # killed in the trial (or failed): the previous version serves
    corrupt: int = 0  # never > 0: the loop raises on the first inconsistency
    killed_in: collections.Counter[str] = field(default_factory=collections.Counter)
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    restart_to_serving_s: list[float] = field(default_factory=list)
    offered: collections.Counter[str] = field(default_factory=collections.Counter)  # per cycle: the manifest's option
    tensor_installs: int = 0  # committed through a tensor delta (not the full artifact)
    cuts: list[tuple[str, str]] = field(default_factory=list)  # per cycle: (state saved at the kill, outcome)
    seconds: float = 0.0

    def phases_cut(self) -> collections.Counter[str]:
        return collections.Counter(phase_of(state) for state, _ in self.cuts)

    def summary(self) -> dict[str, Any]:
        restarts = sorted(self.restart_to_serving_s)
        return {"seed": self.seed, "cycles": self.cycles, "committed": self.committed,
                "rolled_back": self.rolled_back, "corrupt": self.corrupt, "killed_in": dict(self.killed_in),
                "outcomes": dict(self.outcomes), "offered": dict(self.offered),
                "tensor_installs": self.tensor_installs, "phases_cut": dict(self.phases_cut()),
                "restart_to_serving_s_p50": round(restarts[len(restarts) // 2], 2) if restarts else None,
                "restart_to_serving_s_max": round(restarts[-1], 2) if restarts else None,
                "seconds": round(self.seconds, 1)}


def _target_done(agent: DaemonAgent, version: int) -> str | None:
    path = agent.state_dir / "update" / "state.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    target = ((record.get("target") or {}).get("manifest") or {}).get("model") or {}
    if target.get("version") == version and record.get("state") in TERMINAL:
        return str(record["state"])
    return None


def _saved(agent: DaemonAgent, version: int) -> str | None:
    """The state state.json saves for ``version`` (None: it names another target or cannot be read)."""
    try:
        record = json.loads((agent.state_dir / "update" / "state.json").read_text())
    except (OSError, ValueError):
        return None
    if (((record.get("target") or {}).get("manifest") or {}).get("model") or {}).get("version") != version:
        return None
    return str(record.get("state"))


class PhaseAim:
    """Where one device's cuts go: the next phase not cut yet, at a random instant inside it."""

    def __init__(self, rng: random.Random, rotate: int) -> None:
        self.rng = rng
        self.order = PHASES[rotate % len(PHASES):] + PHASES[:rotate % len(PHASES)]  # devices differ in order
        self.lasted: dict[str, float] = {}  # phase -> the longest it was seen to last
        self.hit: set[str] = set()

    def pending(self) -> bool:
        return not self.hit.issuperset(PHASES)

    def next_phase(self, cycle: int) -> str:
        missing = [phase for phase in self.order if phase not in self.hit]
        return missing[0] if missing else self.order[cycle % len(self.order)]

    def wait_and_pick_instant(self, agent: DaemonAgent, version: int, phase: str, timeout: float = 20.0) -> None:
        """Return at the instant to cut: a random one inside ``phase`` of the update to ``version``."""
        if phase == BEFORE:
            time.sleep(self.rng.uniform(0.0, 0.15))  # the agent polls every 0.2 s
            return
        deadline = time.monotonic() + timeout
        while (saved := _saved(agent, version)) != phase:
            if time.monotonic() > deadline or saved in TERMINAL or (saved in PHASES and
                                                                   PHASES.index(saved) > PHASES.index(phase)):
                return  # passed it (or never came): the cut lands where the update is now
            time.sleep(0.001)
        entered = time.monotonic()
        cut_at = entered + self.rng.uniform(0.0, self.lasted.get(phase, 0.05))
        while time.monotonic() < cut_at:
            if _saved(agent, version) != phase:  # it ended before the instant drawn: it lasts at least this
                self.lasted[phase] = max(self.lasted.get(phase, 0.0), time.monotonic() - entered)
                return
            time.sleep(0.001)

    def watch(self, agent: DaemonAgent, version: int, timeout: float = 60.0) -> str:
        """Follow an uncut update to its end, learning how long each phase lasts; its terminal state."""
        deadline = time.monotonic() + timeout
        phase, entered = None, time.monotonic()
        while time.monotonic() < deadline:
            saved = _saved(agent, version)
            if saved != phase:
                if phase in PHASES:
                    self.lasted[phase] = time.monotonic() - entered
                phase, entered = saved, time.monotonic()
            if saved in TERMINAL:
                return saved
            time.sleep(0.001)
        raise AssertionError(f"the update to v{version} did not end within {timeout:.0f} s (at {phase})")

    def record(self, state: str) -> None:
        self.hit.add(phase_of(state))


def _serving(agent: DaemonAgent, sha256: str) -> bool:
    return bool(agent.wait_serving()["model"]["sha256"] == sha256)


def _wait_started(agent: DaemonAgent, version: int, timeout: float = 10.0) -> None:
    """Until state.json names ``version`` as its target (in progress or already ended)."""
    path = agent.state_dir / "update" / "state.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            record = json.loads(path.read_text())
            if (((record.get("target") or {}).get("manifest") or {}).get("model") or {}).get("version") == version:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.01)


class PaddedModels:
    """The model files of one device's versions: a classifier by seed plus two padding tensors."""

    def __init__(self, workdir: Path, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.workdir = workdir
        self.fixed = rng.standard_normal(48_000).astype(np.float32)
        self.tuned = rng.standard_normal(32_000).astype(np.float32)
        self.rng = rng

    def make(self, seed: int, fine_tune: bool) -> Path:
        if fine_tune:
            self.tuned = (self.tuned * (1 + 1e-3 * self.rng.standard_normal(self.tuned.size))).astype(np.float32)
        return make_onnx_padded_classifier(self.workdir / f"padded-{seed}.onnx", seed=seed,
                                           padding=[self.fixed, self.tuned])


def _offered(server: RunningServer, rollout_id: int) -> str:
    doc = requests.get(f"{server.url}/v1/rollouts/{rollout_id}", headers=server.admin(), timeout=10).json()
    return ",".join(sorted({str(t["option"]) for t in doc.get("transfers") or []})) or "none"


def _via(agent: DaemonAgent) -> str | None:
    try:
        return json.loads((agent.state_dir / "update" / "state.json").read_text()).get("via")
    except (OSError, ValueError):
        return None


def run_power_cuts(server: RunningServer, mqtt_port: int | None, workdir: Path, *, cycles: int, seed: int,
                   kill_window_s: float = 1.6, device_id: str = "pc-01", aim: bool = False,
                   max_cycles: int | None = None, rotate: int = 0) -> PowerCutReport:
    """``cycles`` cuts; aimed, more (up to ``max_cycles``) until every phase has been cut once."""
    rng = random.Random(seed)
    aimer = PhaseAim(rng, rotate) if aim else None
    limit = max(cycles, max_cycles or cycles)
    report = PowerCutReport(seed=seed)
    started = time.monotonic()
    versions = Versions(server, workdir / "models", f"pc-{device_id}")
    base_seed = 1000 * (1 + sum(map(ord, device_id)) % 97)  # each device its own model bytes
    models = PaddedModels(workdir / "models", base_seed)
    config = agent_yaml(workdir / "state", device_id, server=server, mqtt_port=mqtt_port, api_port=api_port())
    agent = DaemonAgent(workdir / "agent", config).start()
    with agent:
        first = versions.push(seed=base_seed, path=models.make(base_seed, fine_tune=False))
        agent.wait_enrolled()
        versions.roll_out(first["version"], [device_id])
        if aimer is not None:
            assert aimer.watch(agent, int(first["version"])) == "committed"
        else:
            wait_until(lambda: _target_done(agent, first["version"]) == "committed", timeout=60)
        body = agent.wait_serving()
        assert body["model"]["sha256"] == first["sha256"]
        current = first
        cycle = 0
        while cycle < cycles or (aimer is not None and aimer.pending() and cycle < limit):
            seed_now = base_seed + 1 + cycle
            target = versions.push(seed=seed_now, path=models.make(seed_now, fine_tune=cycle % 2 == 0))
            offer = _offered(server, versions.roll_out(target["version"], [device_id]))
            report.offered[offer] += 1
            if aimer is not None:
                aimer.wait_and_pick_instant(agent, int(target["version"]), aimer.next_phase(cycle))
            elif rng.random() < 0.2:  # any instant around the poll that sees the new desired state
                time.sleep(rng.uniform(0.0, 0.5))
            else:  # an instant of the update itself, once the agent has saved its first step
                _wait_started(agent, target["version"])
                time.sleep(rng.uniform(0.0, kill_window_s))
            agent.kill9()
            killed_in = agent.update_state() or "none"
            report.killed_in[killed_in] += 1
            if aimer is not None:
                aimer.record(killed_in)
            found = check_state_files(agent.state_dir)
            assert found["sha256"] in (current["sha256"], target["sha256"]), (cycle, found)
            restarted = time.monotonic()
            agent.start()
            body = agent.wait_serving(timeout=60)
            report.restart_to_serving_s.append(time.monotonic() - restarted)
            served = versions.by_sha(body["model"]["sha256"])
            assert served is not None and served["sha256"] in (current["sha256"], target["sha256"]), (cycle, body)
            assert_exact_outputs(body, served["seed"])
            wait_until(functools.partial(_target_done, agent, int(target["version"])), timeout=60)
            outcome = str(_target_done(agent, target["version"]))
            report.outcomes[outcome] += 1
            expected = target if outcome == "committed" else current
            wait_until(functools.partial(_serving, agent, str(expected["sha256"])), timeout=20)
            body = agent.wait_serving()
            assert_exact_outputs(body, expected["seed"])
            found = check_state_files(agent.state_dir)
            assert found["sha256"] == expected["sha256"], (cycle, outcome, found)
            if outcome == "committed":
                report.committed += 1
                report.tensor_installs += offer == "tensor" and _via(agent) == "delta"
            else:
                assert outcome in ("rolled_back", "failed"), (cycle, outcome)
                report.rolled_back += 1
            report.cuts.append((killed_in, outcome))
            current = expected
            report.cycles += 1
            cycle += 1
    report.seconds = time.monotonic() - started
    return report


def run_parallel(server: RunningServer, mqtt_port: int | None, workdir: Path, *, cycles: int, seed: int,
                 agents: int = 2, kill_window_s: float = 1.6, aim: bool = False,
                 max_cycles: int | None = None) -> PowerCutReport:
    """``cycles`` power cuts split over ``agents`` devices cut independently at the same time.

    Aimed (``aim``), each device goes on past its share until it has been cut in every phase, up to its
    share of ``max_cycles``.
    """
    import threading

    share = [cycles // agents + (1 if i < cycles % agents else 0) for i in range(agents)]
    reports: list[PowerCutReport | BaseException] = [RuntimeError("not run")] * agents

    def one(i: int) -> None:
        try:
            reports[i] = run_power_cuts(server, mqtt_port, workdir / f"dev{i}", cycles=share[i], seed=seed + i,
                                        kill_window_s=kill_window_s, device_id=f"pc-{i:02d}", aim=aim,
                                        max_cycles=(max_cycles or cycles) // agents, rotate=i)
        except BaseException as exc:  # surfaced below
            reports[i] = exc

    started = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(agents)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for item in reports:
        if isinstance(item, BaseException):
            raise item
    total = PowerCutReport(seed=seed)
    for item in reports:
        assert isinstance(item, PowerCutReport)
        total.cycles += item.cycles
        total.committed += item.committed
        total.rolled_back += item.rolled_back
        total.corrupt += item.corrupt
        total.killed_in.update(item.killed_in)
        total.outcomes.update(item.outcomes)
        total.restart_to_serving_s += item.restart_to_serving_s
        total.offered.update(item.offered)
        total.tensor_installs += item.tensor_installs
        total.cuts += item.cuts
    total.seconds = time.monotonic() - started
    return total
