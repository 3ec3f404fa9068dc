"""The update trust chain against a man in the middle (issue 15): a recording, replaying HTTP proxy
(tests/support/mitm.py) sits between a real agent and the real server.

Replays after a revert and of an older manifest of the same version, a manifest signed with a retired
key, a root signed only by the new key, a device offline through two rotations, an expired manifest
replayed to a device whose clock is in the past, and an independent verifier (canonical JSON written
here + ``cryptography``) of what the server serves.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgefleet.agent.errors import TransportError
from edgefleet.agent.ota.client import UpdateClient
from edgefleet.agent.ota.clock import FixedClock
from edgefleet.agent.signing import load_private_key, sign_canonical
from edgefleet.agent.wire import MANIFEST_MEDIA_TYPE
from tests.ota.helpers import ort_loader
from tests.ota.rig import Device, Traffic
from tests.reliability.support import FAST_TRIAL, REPO, DaemonAgent, Versions, agent_yaml, api_port
from tests.support.mitm import Exchange, MitmProxy
from tests.support.net import wait_until
from tests.support.server import RunningServer, start_server

Stack = tuple[RunningServer, MitmProxy]


@contextmanager
def stack_of(base: Path, **overrides: Any) -> Iterator[Stack]:
    server = start_server(base, overrides=overrides or None)
    proxy = MitmProxy(server.url)
    try:
        yield server, proxy
    finally:
        proxy.close()
        server.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with stack_of(tmp_path / "stack") as running:
        yield running


def proxied(server: RunningServer, proxy: MitmProxy, tmp_path: Path, device_id: str,
            clock: FixedClock | None = None) -> Device:
    """An in-process agent (UpdateClient on real ONNX Runtime) that reaches the server through the proxy."""
    device = Device(server, tmp_path, device_id, trial=FAST_TRIAL)  # enrolls directly, saves its token
    device.config.server.url = proxy.url
    device.client = UpdateClient(device.config, device.host, device.log, ort_loader, clock=clock)
    return device


def roll_out(server: RunningServer, name: str, version: int, ids: list[str], soak_s: float = 0) -> int:
    body = {"model": name, "version": version, "target": {"device_ids": ids}, "waves": [100],
            "gates": {"soak_s": soak_s}, "trial": FAST_TRIAL}
    response = requests.post(f"{server.url}/v1/rollouts", headers=server.admin(), json=body, timeout=10)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def served(proxy: MitmProxy, version: int | None = None) -> Exchange:
    """The last genuine 200 manifest the proxy passed on (of ``version`` when given)."""
    for exchange in reversed(proxy.exchanges("/manifest")):
        if exchange.status == 200 and not exchange.forged and (
                version is None or json.loads(exchange.body)["manifest"]["model"]["version"] == version):
            return exchange
    raise AssertionError("no manifest went through the proxy")


def rotate_key(server: RunningServer) -> str:
    """``edgefleet-server rotate-key`` on the running server's config; returns once the server serves it."""
    before = requests.get(f"{server.url}/v1/trust/roots", timeout=5).json()["latest"]
    done = subprocess.run([sys.executable, "-m", "edgefleet.server.cli",
                           "rotate-key", "--config", str(server.config_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    wait_until(lambda: requests.get(f"{server.url}/v1/trust/roots", timeout=5).json()["latest"] == before + 1,
               timeout=10)
    return done.stdout


def trusted_root_version(device: Device) -> int:
    doc = json.loads((device.config.state_dir / "trust" / "root.json").read_text())
    return int(doc["root"]["signed"]["version"])


def reason(device: Device) -> str:
    return str(device.client.record.reason)


def serving(device: Device) -> int:
    assert device.host.meta is not None
    return device.host.meta.version


def install(device: Device, server: RunningServer, versions: Versions, seed: int, soak_s: float = 0) -> int:
    entry = versions.push(seed=seed)
    rollout = roll_out(server, versions.name, entry["version"], [device.config.device_id], soak_s)
    with Traffic(device.host):
        assert device.update() == "committed", device.log.types()
    assert serving(device) == entry["version"]
    return rollout


# --- replays --------------------------------------------------------------------------------------------


def test_replay_after_a_revert_is_refused_and_v1_keeps_serving(stack: Stack, tmp_path: Path) -> None:
    """The issue's first finding, with the real ``edgefleet-agent run`` process behind the proxy."""
    server, proxy = stack
    versions = Versions(server, tmp_path / "models", "revert")
    config = agent_yaml(tmp_path / "state", "rv-01", server=server, mqtt_port=None, api_port=api_port(),
                        server_url=proxy.url)
    with DaemonAgent(tmp_path / "agent", config).start() as agent:
        agent.wait_enrolled()
        v1 = versions.push(seed=0)
        roll_out(server, versions.name, 1, ["rv-01"])
        wait_until(lambda: agent.wait_serving()["model"]["sha256"] == v1["sha256"], timeout=60)
        v2 = versions.push(seed=1)
        second = roll_out(server, versions.name, 2, ["rv-01"], soak_s=3600)  # still running: it can be aborted
        wait_until(lambda: agent.wait_serving()["model"]["sha256"] == v2["sha256"], timeout=60)
        genuine_v2 = served(proxy, version=2)
        aborted = requests.post(f"{server.url}/v1/rollouts/{second}/abort", headers=server.admin(),
                                json={"revert": True}, timeout=10)
        assert aborted.status_code == 200, aborted.text
        wait_until(lambda: agent.wait_serving()["model"]["sha256"] == v1["sha256"], timeout=60)
        revert = served(proxy, version=1)
        assert json.loads(revert.body)["manifest"]["revert"] is True
        assert json.loads(revert.body)["manifest"]["generation"] > json.loads(genuine_v2.body)["manifest"]["generation"]
        proxy.serve("/manifest", genuine_v2)  # replay the captured, genuine v2 manifest

        def refused() -> bool:
            record = json.loads((agent.state_dir / "update" / "state.json").read_text())
            return record["state"] == "rejected" and "a replay" in str(record.get("reason"))

        wait_until(refused, timeout=30)
        time.sleep(1.0)  # more polls of the replay: still refused, nothing downloaded
        body = agent.wait_serving()
        assert body["model"]["sha256"] == v1["sha256"] and body["model"]["version"] == 1
        assert agent.update_state() == "rejected"


def test_replay_of_an_older_manifest_of_the_same_version_is_refused(stack: Stack, tmp_path: Path) -> None:
    server, proxy = stack
    device = proxied(server, proxy, tmp_path, "same-v")
    versions = Versions(server, tmp_path / "models", "same")
    install(device, server, versions, seed=0)
    older = served(proxy, version=1)
    old_generation = json.loads(older.body)["manifest"]["generation"]
    roll_out(server, versions.name, 1, ["same-v"])  # the same version again: a new desired state
    assert device.update() == "committed"
    assert device.client.record.generation == old_generation + 1
    proxy.serve("/manifest", older)
    assert device.client.run_once().value == "rejected"
    assert reason(device) == (f"manifest generation {old_generation} is older than the last accepted "
                              f"({old_generation + 1}): a replay")
    assert serving(device) == 1 and device.client.slots.active_info().meta.version == 1  # type: ignore[union-attr]


# --- rotation -------------------------------------------------------------------------------------------


def test_after_rotate_key_the_next_rollout_installs_and_the_retired_key_is_refused(stack: Stack,
                                                                                    tmp_path: Path) -> None:
    server, proxy = stack
    device = proxied(server, proxy, tmp_path, "rot")
    versions = Versions(server, tmp_path / "models", "rot")
    install(device, server, versions, seed=0)
    assert trusted_root_version(device) == 1  # provisioned with a bare key (version 0): walked to 1
    retired = load_private_key(server.workdir / "signing.key")  # a copy, as a thief of the old key has
    out = rotate_key(server)
    assert out.startswith("root version 2: ")
    install(device, server, versions, seed=1)
    assert trusted_root_version(device) == 2
    current = json.loads(served(proxy, version=2).body)
    assert current["root_version"] == 2
    forged = copy.deepcopy(current["manifest"])
    forged["generation"] += 100
    forged["model"]["version"] = 3
    proxy.serve("/manifest", json.dumps({"manifest": forged, "signatures": [sign_canonical(retired, forged)],
                                         "root_version": 1}).encode())
    assert device.client.run_once().value == "rejected"
    assert reason(device) == "manifest is not signed by a threshold of root version 2's manifest keys " \
                             "(0 valid, 1 needed)"
    assert serving(device) == 2


def test_a_root_signed_only_by_the_new_key_is_refused(stack: Stack, tmp_path: Path) -> None:
    server, proxy = stack
    device = proxied(server, proxy, tmp_path, "root-new-only")
    versions = Versions(server, tmp_path / "models", "newonly")
    install(device, server, versions, seed=0)
    rotate_key(server)

    def only_the_new_key(exchange: Exchange) -> bytes:
        body = json.loads(exchange.body)
        for root in body["roots"]:
            mine = set(root["signed"]["roles"]["root"]["keyids"])
            root["signatures"] = [s for s in root["signatures"] if s["keyid"] in mine]
        return json.dumps(body).encode()

    proxy.rewrite("/v1/trust/roots", only_the_new_key)
    v2 = versions.push(seed=1)
    roll_out(server, versions.name, v2["version"], ["root-new-only"])
    assert device.client.run_once().value == "rejected"
    assert reason(device) == "manifest is not signed by a threshold of root version 1's manifest keys " \
                             "(0 valid, 1 needed)"
    assert trusted_root_version(device) == 1 and serving(device) == 1
    proxy.forward("/v1/trust/roots")  # the genuine chain: the device follows it and installs
    with Traffic(device.host):
        assert device.update() == "committed"
    assert trusted_root_version(device) == 2 and serving(device) == 2


def test_a_device_offline_through_two_rotations_catches_up(stack: Stack, tmp_path: Path) -> None:
    server, proxy = stack
    device = proxied(server, proxy, tmp_path, "offline")
    versions = Versions(server, tmp_path / "models", "offline")
    install(device, server, versions, seed=0)
    rotate_key(server)  # the device polls neither time
    rotate_key(server)
    v2 = versions.push(seed=1)
    roll_out(server, versions.name, v2["version"], ["offline"])
    with Traffic(device.host):
        assert device.update() == "committed"
    assert trusted_root_version(device) == 3 and serving(device) == 2
    walked = [e for e in proxy.exchanges("/v1/trust/roots") if "since=1" in e.path]
    assert walked and [r["signed"]["version"] for r in json.loads(walked[-1].body)["roots"]] == [2, 3]


# --- time -----------------------------------------------------------------------------------------------


def test_an_expired_manifest_is_refused_by_a_device_whose_clock_is_in_the_past(tmp_path: Path) -> None:
    with stack_of(tmp_path / "short", manifest_ttl_s=4.0) as (server, proxy):
        clock = FixedClock(synced=True)
        device = proxied(server, proxy, tmp_path, "clock", clock=clock)
        versions = Versions(server, tmp_path / "models", "clock")
        install(device, server, versions, seed=0)
        stale = served(proxy, version=1)
        expires = json.loads(stale.body)["manifest"]["expires_at"]
        wait_until(lambda: time.time() > expires + 0.6, timeout=10)
        assert device.client.run_once().value == "committed"  # the server renewed it: same state, newer issued_at
        renewed = json.loads(served(proxy, version=1).body)["manifest"]
        assert renewed["issued_at"] > expires and device.client.record.trusted_time == renewed["issued_at"]
        clock.offset_s, clock.synced = -30 * 86400.0, False  # a Pi rebooted without RTC, before NTP
        proxy.serve("/manifest", stale)
        assert device.client.run_once().value == "rejected"
        assert reason(device) == (f"manifest expired at {expires:.0f} (now {renewed['issued_at']:.0f}; the clock is "
                                  f"not synchronized and behind the newest trusted time "
                                  f"{renewed['issued_at']:.0f})")
        assert serving(device) == 1
        # the trusted time was saved with the update state: a restarted agent refuses it too
        again = UpdateClient(device.config, device.host, device.log, ort_loader, clock=clock)
        assert again.record.trusted_time == renewed["issued_at"]
        assert again.run_once().value == "rejected" and "expired" in str(again.record.reason)


# --- formats --------------------------------------------------------------------------------------------


def jcs(value: Any) -> str:
    """RFC 8785, written here from the RFC alone: keys sorted by UTF-16 code units, ECMAScript numbers,
    minimal string escapes. No NaN or Infinity."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        assert abs(value) < 2**53
        return str(value)
    if isinstance(value, float):
        assert math.isfinite(value)
        return _es_number(value)
    if isinstance(value, str):
        out = ['"']
        for ch in value:
            code = ord(ch)
            if ch in '"\\':
                out.append("\\" + ch)
            elif code < 0x20:
                out.append({8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"}.get(code, f"\\u{code:04x}"))
            else:
                out.append(ch)
        return "".join(out) + '"'
    if isinstance(value, list):
        return "[" + ",".join(jcs(v) for v in value) + "]"
    assert isinstance(value, dict)
    keys = sorted(value, key=lambda k: k.encode("utf-16-be"))
    return "{" + ",".join(jcs(k) + ":" + jcs(value[k]) for k in keys) + "}"


def _es_number(x: float) -> str:
    """ECMAScript Number::toString: the shortest round-trip digits, exponent form outside [1e-6, 1e21)."""
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    digits_tuple = Decimal(repr(abs(x))).normalize().as_tuple()
    digits = "".join(map(str, digits_tuple.digits))
    k = len(digits)
    n = k + int(digits_tuple.exponent)  # the decimal point sits after n digits
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    exponent = n - 1
    mantissa = digits[0] + ("." + digits[1:] if k > 1 else "")
    return f"{sign}{mantissa}e{'+' if exponent > 0 else '-'}{abs(exponent)}"


def test_a_served_manifest_verifies_with_an_independent_implementation(stack: Stack, tmp_path: Path) -> None:
    server, proxy = stack
    assert [_es_number(v) for v in (1e21, 1e-7, 123.0, 0.000001, 1764600000.125, -2.5e-9)] == \
        ["1e+21", "1e-7", "123", "0.000001", "1764600000.125", "-2.5e-9"]
    device = proxied(server, proxy, tmp_path, "third-party")
    versions = Versions(server, tmp_path / "models", "third")
    install(device, server, versions, seed=0)
    body = json.loads(served(proxy, version=1).body)
    assert isinstance(body["manifest"]["drift_profile"], dict)  # the server splices it in encoded once
    roots = requests.get(f"{proxy.url}/v1/trust/roots", timeout=5).json()["roots"]
    root = roots[-1]["signed"]
    public = base64.b64decode(root["keys"][root["roles"]["manifest"]["keyids"][0]]["public"])
    assert hashlib.sha256(public).hexdigest() == body["signatures"][0]["keyid"]  # the key id is sha256(raw key)
    key = Ed25519PublicKey.from_public_bytes(public)
    key.verify(base64.b64decode(body["signatures"][0]["sig"]), jcs(body["manifest"]).encode())
    first = roots[0]["signed"]
    for signature in roots[0]["signatures"]:  # root version 1 is self-signed the same way
        signer = Ed25519PublicKey.from_public_bytes(base64.b64decode(first["keys"][signature["keyid"]]["public"]))
        signer.verify(base64.b64decode(signature["sig"]), jcs(first).encode())
    # the legacy form is only for agents that do not ask for this one
    legacy = requests.get(f"{server.url}/v1/devices/third-party/manifest", timeout=5,
                          headers={"Authorization": f"Bearer {device.client.api().token}"}).json()
    assert "signature" in legacy and "signatures" not in legacy
    modern = requests.get(f"{server.url}/v1/devices/third-party/manifest", timeout=5,
                          headers={"Authorization": f"Bearer {device.client.api().token}",
                                   "Accept": MANIFEST_MEDIA_TYPE})
    assert modern.headers["Content-Type"] == MANIFEST_MEDIA_TYPE and "signatures" in modern.json()
    # NaN in a signed document is refused before anything else looks at it
    proxy.rewrite("/manifest", lambda e: e.body.replace(b'"expires_at":', b'"expires_at":NaN,"x":', 1))
    device.client = UpdateClient(device.config, device.host, device.log, ort_loader)  # no ETag: a 200 to rewrite
    with pytest.raises(TransportError, match=r"not JSON \(NaN is not a JSON number\)"):
        device.client.run_once()
    assert device.client.state.value == "committed" and serving(device) == 1
    # and a man in the middle cannot make the agent hold gigabytes: the body is read up to a cap
    proxy.forward("/manifest")
    proxy.serve("/manifest", b'{"manifest": "' + b"x" * (5 << 20) + b'"}')
    with pytest.raises(TransportError, match="manifest is larger than 4194304 bytes"):
        device.client.run_once()
    assert device.client.state.value == "committed" and serving(device) == 1


def test_once_the_fleet_is_updated_the_legacy_form_can_be_switched_off(tmp_path: Path) -> None:
    with stack_of(tmp_path / "strict", legacy_manifests=False) as (server, proxy):
        device = proxied(server, proxy, tmp_path, "strict")
        versions = Versions(server, tmp_path / "models", "strict")
        install(device, server, versions, seed=0)  # the agent asks for the RFC 8785 form: served
        token = {"Authorization": f"Bearer {device.client.api().token}"}
        old_agent = requests.get(f"{server.url}/v1/devices/strict/manifest", headers=token, timeout=5)
        assert old_agent.status_code == 406
        assert MANIFEST_MEDIA_TYPE in old_agent.json()["detail"]
