"""False pauses and detection of the p95 latency gate, old against new, over simulated rollouts.

Each simulated rollout is one wave's verdict on a fleet of ``--devices`` devices of one class:

- a device's p95 has its own level (lognormal around 2 ms, spread ``--device-spread``), each telemetry message
  adds noise (lognormal ``--message-noise``) and now and then a spike (``--spike-rate`` of messages x3);
- the load shift: in a share ``--shift-share`` of the rollouts the machine gets busier during the wave, every
  device's p95 multiplied by a factor drawn from 1.5..``--shift-max`` (per device jitter 0.15), as on the
  demo's 2-core box;
- the updated devices (``--updated`` of them; the rest are the control) are ``slowdown`` times slower.

Gates compared (same threshold x1.5):

- old: the median over updated devices of (mean p95 since commit / the p95 it last reported before);
- new, concurrent: server/latency_gate.py with the control cohort (Mann-Whitney, alpha 0.01): cohorts of
  devices when both sides have ``min_devices``, else (a 1-device wave) messages relative to each device's own
  pre-update window, updated against control;
Every gate looks again after each message of the wave (the old one from the first, as it did), and a
pause at any look counts: what a rollout evaluated every tick sees.

- new, concurrent (absolute ms): the same without the devices' pre-update windows (new devices: ms figures);
- new, paired (the last wave or a 1-device wave: no control): the same devices before against after.

    .venv/bin/python benchmarks/gate_calibration.py --rollouts 1000 [--json]

``--query-devices N``: also what one evaluation's queries cost (server/crud/gate_data.py) on a SQLite
database with N devices in a rollout, 20 telemetry messages each before it and 5 since, a tenth committed.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.server.latency_gate import DeviceWindow, LatencyData, LatencySettings, PairedDevice, evaluate_latency
from edgefleet.server.stats import median


@dataclass(frozen=True)
class Sim:
    devices: int = 50
    updated: int = 5
    before: int = 30  # messages in the pre-update window
    after: int = 6  # messages since commit (after the warm-up)
    device_spread: float = 0.35
    message_noise: float = 0.2
    spike_rate: float = 0.05
    shift_share: float = 0.5
    shift_max: float = 5.0


@dataclass(frozen=True)
class Wave:
    before: np.ndarray  # (devices, messages) p95s before the update
    after: np.ndarray  # (devices, messages) p95s in the wave, in the order they arrive
    updated: int  # the first ``updated`` devices run the new version


def simulate(rng: np.random.Generator, sim: Sim, *, slowdown: float, updated: int, shift: bool | None) -> Wave:
    n = sim.devices
    level = 2.0 * np.exp(rng.normal(0, sim.device_spread, n))
    shifted = rng.random() < sim.shift_share if shift is None else shift
    load = (rng.uniform(1.5, sim.shift_max) if shifted else 1.0) * np.exp(rng.normal(0, 0.15, n))

    def messages(count: int, factor: np.ndarray) -> np.ndarray:
        noise = np.exp(rng.normal(0, sim.message_noise, (n, count)))
        spikes = np.where(rng.random((n, count)) < sim.spike_rate, 3.0, 1.0)
        return level[:, None] * factor[:, None] * noise * spikes

    speed = np.ones(n)
    speed[:updated] = slowdown
    return Wave(messages(sim.before, np.ones(n)), messages(sim.after, load * speed), updated)


def views(wave: Wave, k: int) -> dict[str, LatencyData | float]:
    """What each gate sees once ``k`` messages of the wave have arrived."""
    n, u = wave.after.shape[0], wave.updated
    after = wave.after[:, :k]
    means, baselines = after.mean(axis=1), wave.before.mean(axis=1)
    windows = [DeviceWindow(f"d{i}", "c", float(means[i]), k, float(baselines[i])) for i in range(n)]
    plain = [DeviceWindow(f"d{i}", "c", float(means[i]), k) for i in range(n)]
    pairs = [PairedDevice(f"d{i}", tuple(wave.before[i].tolist()), tuple(after[i].tolist())) for i in range(n)]
    return {
        "old": median([float(means[i] / wave.before[i, -1]) for i in range(u)]),
        "new_concurrent": LatencyData(updated=windows[:u], control=windows[u:], paired=pairs[:u],
                                      control_paired=pairs[u:], reporting=True),
        "new_concurrent_absolute": LatencyData(updated=plain[:u], control=plain[u:], paired=pairs[:u],
                                               control_paired=pairs[u:], reporting=True),
        "new_paired": LatencyData(updated=windows[:u], control=[], paired=pairs[:u], reporting=True),
    }


def rates(sim: Sim, *, rollouts: int, slowdown: float, seed: int, settings: LatencySettings,
          shift: bool | None = None, updated: int | None = None) -> dict[str, Any]:
    """Share of rollouts each gate pauses; the gate looks again at every message (a real one every tick), so
    a pause at any look counts."""
    rng = np.random.default_rng(seed)
    pauses = {"old": 0, "new_concurrent": 0, "new_concurrent_absolute": 0, "new_paired": 0}
    for _ in range(rollouts):
        wave = simulate(rng, sim, slowdown=slowdown, updated=updated or sim.updated, shift=shift)
        paused: set[str] = set()
        for k in range(1, sim.after + 1):
            for gate, view in views(wave, k).items():
                if gate in paused:
                    continue
                if isinstance(view, float):
                    breach = view > settings.max_ratio
                else:
                    breach = evaluate_latency(settings, view, wave=0).status == "breach"
                if breach:
                    paused.add(gate)
        for gate in paused:
            pauses[gate] += 1
    return {k: round(v / rollouts, 4) for k, v in pauses.items()}


def query_cost(devices: int, *, repeats: int = 5) -> dict[str, Any]:
    """Seconds one latency_data call takes (median of ``repeats``) with ``devices`` in the rollout."""
    import tempfile
    from pathlib import Path

    from edgefleet.agent.wire import UpdateReport
    from edgefleet.server.crud import devices as device_crud
    from edgefleet.server.crud import registry, rollouts, telemetry
    from edgefleet.server.crud.gate_data import latency_data
    from edgefleet.server.db import Database, migrate

    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'gate.db'}")
        migrate(db.engine)
        ids = [f"q{i:05d}" for i in range(devices)]
        with db.session() as s:
            for device_id in ids:
                device_crud.enroll_device(s, device_id=device_id, device_class="rpi4", tags=["q"], hw={})
            for sha in ("a" * 64, "b" * 64):
                registry.create_version(s, name="q", sha256=sha, size=10, fmt="onnx", task="other", inputs=[],
                                        outputs=[], labels=None, preprocess=None, runtime_hints=None,
                                        calibration_sha256=None)
        with db.session() as s:
            _, v1 = registry.get_version(s, name="q", version=1)
            first = rollouts.create_rollout(s, version_id=v1.id, target={"tags": ["q"]}, waves=[100], gates={},
                                            priority=0, trial=None, shadow=None, auto_revert=False, now=0.0)
            rollouts.start_wave(s, rollout=first, wave=0, now=1.0)
            _, v2 = registry.get_version(s, name="q", version=2)
            rollout = rollouts.create_rollout(s, version_id=v2.id, target={"tags": ["q"]}, waves=[10, 100],
                                              gates={}, priority=0, trial=None, shadow=None, auto_revert=False,
                                              now=1000.0)
            rollouts.start_wave(s, rollout=rollout, wave=0, now=1000.0)
            rollout_id = rollout.id
            canaries = {r.device_id for r in rollouts.rollout_devices(s, rollout_id=rollout_id) if r.wave == 0}
        rng = np.random.default_rng(0)
        rows = []
        for device_id in ids:
            seq = 0
            for k in range(20):
                seq += 1
                rows.append(telemetry.telemetry_row(device_id, {"seq": seq, "ts": 800.0 + 10 * k, "model": {
                    "name": "q", "version": 1}, "inference": {"latency_ms": {"p95": float(rng.uniform(2, 3))}}}, 0.0))
            for k in range(5):
                seq += 1
                rows.append(telemetry.telemetry_row(device_id, {"seq": seq, "ts": 1020.0 + 10 * k, "model": {
                    "name": "q", "version": 2 if device_id in canaries else 1},
                    "inference": {"latency_ms": {"p95": float(rng.uniform(2, 3))}}}, 0.0))
        with db.session() as s:
            telemetry.insert_telemetry(s, rows=rows)
            for device_id in canaries:
                rollouts.record_report(s, device=device_crud.get_device(s, device_id=device_id),
                                       report=UpdateReport(state="committed", model="q", version=2), now=1005.0)
        took = []
        for _ in range(repeats):
            with db.session() as s:
                started = time.perf_counter()
                data = latency_data(s, rollout=rollouts.get_rollout(s, rollout_id=rollout_id),
                                    settings=LatencySettings())
                took.append(time.perf_counter() - started)
        db.dispose()
    return {"devices": devices, "telemetry_rows": len(rows), "updated": len(data.updated),
            "control": len(data.control), "seconds_median": round(median(took), 4), "seconds_max": round(max(took), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rollouts", type=int, default=1000)
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--updated", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--query-devices", type=int, default=0, metavar="N",
                   help="also time one evaluation's queries with N devices (SQLite)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.rollouts < 1 or not 1 <= a.updated < a.devices:
        p.error("--rollouts ≥ 1 and 1 ≤ --updated < --devices")
    sim = Sim(devices=a.devices, updated=a.updated)
    settings = LatencySettings()
    started = time.monotonic()
    rows: dict[str, Any] = {}
    for name, slowdown, shift in (("identical, load shift in half the rollouts", 1.0, None),
                                  ("identical, load shift in every rollout", 1.0, True),
                                  ("identical, no load shift", 1.0, False),
                                  ("1.5x slower, no load shift", 1.5, False),
                                  ("2x slower, no load shift", 2.0, False),
                                  ("2x slower, load shift", 2.0, True)):
        rows[name] = rates(sim, rollouts=a.rollouts, slowdown=slowdown, seed=a.seed, settings=settings, shift=shift)
    one = {name: rates(sim, rollouts=a.rollouts, slowdown=slowdown, seed=a.seed, settings=settings, shift=shift,
                       updated=1)
           for name, slowdown, shift in (("1-device wave, identical, load shift", 1.0, True),
                                         ("1-device wave, identical, no load shift", 1.0, False),
                                         ("1-device wave, 2x slower, no load shift", 2.0, False))}
    doc = {"rollouts": a.rollouts, "devices": a.devices, "updated": a.updated, "seed": a.seed,
           "settings": {"max_ratio": settings.max_ratio, "alpha": settings.alpha,
                        "min_devices": settings.min_devices, "min_samples": settings.min_samples},
           "sim": sim.__dict__, "pause_rate": rows, "pause_rate_1_device_wave": one,
           "elapsed_s": round(time.monotonic() - started, 1)}
    if a.query_devices > 0:
        doc["query_cost"] = query_cost(a.query_devices)
    if a.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"{a.rollouts} simulated waves each, {a.devices} devices, {a.updated} updated; pause rate "
          f"(identical model: false pauses; slower: detection)")
    print(f"{'scenario':<45} {'old gate':>9} {'new concurrent':>15} {'(absolute ms)':>14} {'new paired':>11}")
    for name, r in {**rows, **one}.items():
        print(f"{name:<45} {r['old']:>9.3f} {r['new_concurrent']:>15.3f} {r['new_concurrent_absolute']:>14.3f} "
              f"{r['new_paired']:>11.3f}")
    print(f"({doc['elapsed_s']} s)")
    if "query_cost" in doc:
        q = doc["query_cost"]
        print(f"one evaluation's queries, {q['devices']} devices ({q['telemetry_rows']} telemetry rows, SQLite): "
              f"median {q['seconds_median']} s, max {q['seconds_max']} s")


if __name__ == "__main__":
    main()
