"""One virtual device: enrollment, MQTT birth/will/telemetry/events, manifest check-ins, updates.

It speaks the real protocols (agent/wire.py documents, Ed25519 manifests, artifact downloads checked
by sha256, UpdateReports) but runs no model: inference figures in telemetry are synthetic.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from edgefleet.agent.errors import SignatureError
from edgefleet.agent.signing import verify_document
from edgefleet.agent.wire import (
    Birth,
    Command,
    Event,
    InferenceStats,
    LatencySummary,
    Manifest,
    ModelRef,
    SignedManifest,
    SystemStats,
    Telemetry,
    UpdateReport,
    Will,
    device_topic,
)

from .http import HttpError, HttpPool
from .stats import WorkerStats

AGENT_VERSION = "fleet-sim/1"
REPORT_PATIENCE_S = 120.0  # how long a device keeps retrying one update report
CHECK_MIN_INTERVAL_S = 5.0  # as the agent's server.check_min_interval_s: pushed checks at most this often
COMMAND_MAX_BYTES = 4096


@dataclass(frozen=True)
class FleetSpec:
    """What every device of a run shares (picklable: it crosses to the worker processes)."""

    server_url: str
    mqtt_host: str
    mqtt_port: int
    mqtt_v5: bool
    enrollment_token: str
    public_key_pem: bytes
    tag: str
    device_class: str = "fleet-sim"
    poll_s: float = 30.0
    telemetry_s: float = 15.0
    trial_s: float = 1.0
    fail_fraction: float = 0.0
    latency_ms: float = 4.0  # p50 of the synthetic inference latency with the first model
    regression: float = 1.0  # latency factor of every later model (1.5: the p95 gate should stop it)
    model: str = ""
    model_version: int = 1
    model_sha256: str = ""
    seed: int = 0
    push: bool = False  # subscribe to the commands topic and check in when told (check_update)


class VirtualDevice:
    def __init__(self, device_id: str, spec: FleetSpec, http: HttpPool, key: Ed25519PublicKey,
                 stats: WorkerStats, own_http: bool = False) -> None:
        self.id, self.spec, self.http, self.key, self.stats = device_id, spec, http, key, stats
        self.own_http = own_http  # its own connection: closed after each check-in and the update it brought
        self.rng = random.Random(f"{spec.seed}/{device_id}")
        self.token = ""
        self.etag: str | None = None
        self.model = ModelRef(name=spec.model, version=spec.model_version, sha256=spec.model_sha256)
        self.refused: set[str] = set()  # artifacts that failed here: not tried again
        self.session = int(time.time())  # grows per connection; fits the 32-bit column the server keeps it in
        self.telemetry_seq = self.event_seq = 0
        self.mqtt: aiomqtt.Client | None = None
        self.started = time.monotonic()
        self.inferences = 0
        self.wake = asyncio.Event()  # a pushed check_update
        self.last_checkin = -math.inf

    # --- HTTP --------------------------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def enroll(self) -> None:
        body = json.dumps({"device_id": self.id, "enrollment_token": self.spec.enrollment_token,
                           "device_class": self.spec.device_class, "tags": [self.spec.tag],
                           "hw": {"runtimes": ["onnxruntime"], "arch": "aarch64", "cpu_count": 4, "mem_mb": 4096,
                                  "accelerators": []}}).encode()
        for attempt in range(5):
            try:
                reply = await self.http.request("POST", "/v1/enroll", {"Content-Type": "application/json"}, body)
            except HttpError as exc:
                self.stats.error("enroll", str(exc))
                await asyncio.sleep(0.5 * 2 ** attempt * self.rng.random())
                continue
            if reply.status == 200:
                self.token = json.loads(reply.body)["token"]
                self.stats.enrolled += 1
                return
            if reply.status in (408, 429) or reply.status >= 500:  # as the agent: try again later
                self.stats.error(f"enroll_{reply.status}", reply.body[:200].decode(errors="replace"))
                await asyncio.sleep(0.5 * 2 ** attempt * self.rng.random())
                continue
            raise RuntimeError(f"{self.id}: enrollment answered {reply.status}: {reply.body[:200]!r}")
        raise RuntimeError(f"{self.id}: enrollment failed 5 times")

    async def checkin(self) -> None:
        headers = self._auth()
        if self.etag:
            headers["If-None-Match"] = self.etag
        sent = time.time()
        started = time.perf_counter()
        try:
            reply = await self.http.request("GET", f"/v1/devices/{self.id}/manifest", headers)
        except HttpError as exc:
            self.stats.error("checkin", str(exc))
            return
        self.stats.checkin_ms.append((time.perf_counter() - started) * 1000)
        self.stats.checkin_t.append(sent)
        self.stats.checkin_status.append(reply.status)
        self.stats.checkin_queued_ms.append(reply.queued_s * 1000)
        self.stats.checkins[reply.status] += 1
        if reply.status == 304:
            return
        if reply.status == 204:
            self.etag = None
            return
        if reply.status != 200:
            self.stats.error(f"checkin_{reply.status}", reply.body[:200].decode(errors="replace"))
            return
        self.stats.fetched.add(self.id)
        self.etag = reply.headers.get("etag")
        try:
            signed = SignedManifest.model_validate_json(reply.body)
            verify_document(self.key, signed.manifest, signed.signature)
            manifest = Manifest.model_validate(signed.manifest)
        except (ValidationError, SignatureError) as exc:
            self.stats.error("manifest", str(exc).splitlines()[0])
            return
        artifact = manifest.artifact
        if artifact.sha256 == self.model.sha256 or artifact.sha256 in self.refused:
            return
        if manifest.expires_at < time.time():
            await self._reject(manifest, "manifest expired")
        elif (manifest.model.version < (self.model.version or 0) and not manifest.revert
              and manifest.model.name == self.model.name):
            await self._reject(manifest, f"version {manifest.model.version} is older than {self.model.version}")
        else:
            await self.update(manifest)

    async def report(self, manifest: Manifest, state: str, reason: str | None = None,
                     metrics: dict[str, float] | None = None) -> None:
        body = UpdateReport(state=state, model=manifest.model.name, version=manifest.model.version,  # type: ignore[arg-type]
                            sha256=manifest.artifact.sha256, rollout_id=manifest.rollout_id, reason=reason,
                            metrics=metrics or {}).model_dump_json().encode()
        # as the agent does: a report is kept until the server acknowledges it (a replica dying mid-request
        # answers 502 through the load balancer, or the connection breaks); a 4xx is final
        deadline = time.monotonic() + REPORT_PATIENCE_S
        attempt = 0
        while True:
            try:
                reply = await self.http.request("POST", f"/v1/devices/{self.id}/reports",
                                                {**self._auth(), "Content-Type": "application/json"}, body)
            except HttpError as exc:
                self.stats.error("report", str(exc))
                reply = None
            if reply is not None and reply.status < 500:
                if reply.status == 204:
                    self.stats.reports_acked += 1
                    self.stats.last_report[self.id] = state
                else:
                    self.stats.error(f"report_{reply.status}", reply.body[:200].decode(errors="replace"))
                self.stats.reports_sent += 1
                return
            if reply is not None:
                self.stats.error(f"report_{reply.status}", reply.body[:200].decode(errors="replace"))
            if time.monotonic() > deadline:
                self.stats.reports_given_up += 1
                return
            await asyncio.sleep(min(5.0, 0.25 * 2 ** attempt) * self.rng.uniform(0.5, 1.5))
            attempt += 1

    # --- updates -------------------------------------------------------------------------------------

    async def _reject(self, manifest: Manifest, reason: str) -> None:
        self.refused.add(manifest.artifact.sha256)
        self.stats.outcomes["rejected"] += 1
        await self.report(manifest, "rejected", reason)
        await self.event("update.rejected", manifest, reason=reason)

    async def update(self, manifest: Manifest) -> None:
        artifact = manifest.artifact
        await self.report(manifest, "downloading")
        await self.event("update.downloading", manifest, size=artifact.size)
        try:
            reply = await self.http.request("GET", artifact.url, self._auth())
        except HttpError as exc:
            self.stats.error("download", str(exc))
            self.etag = None  # the next check-in fetches the manifest again and retries
            return
        if reply.status >= 500:  # the replica went away mid-download: try again from the next check-in
            self.stats.error(f"download_{reply.status}", reply.body[:200].decode(errors="replace"))
            self.etag = None
            return
        self.stats.downloads += 1
        digest = hashlib.sha256(reply.body).hexdigest()
        if reply.status != 200 or digest != artifact.sha256 or len(reply.body) != artifact.size:
            await self._reject(manifest, f"download: status {reply.status}, sha256 {digest[:12]}, "
                                         f"{len(reply.body)} bytes")
            return
        await self.event("update.verified", manifest)
        await self.report(manifest, "installing")
        await self.event("update.installed", manifest)
        await self.report(manifest, "trial")
        await asyncio.sleep(self.spec.trial_s)
        if self.rng.random() < self.spec.fail_fraction:
            reason = "trial: error rate 0.25 above 0.05"
            self.refused.add(artifact.sha256)
            self.stats.outcomes["rolled_back"] += 1
            await self.report(manifest, "rolled_back", reason, {"error_rate": 0.25})
            await self.event("update.rolled_back", manifest, reason=reason)
            return
        self.stats.running[self.model.version or 0] -= 1
        self.model = ModelRef(name=manifest.model.name, version=manifest.model.version, sha256=artifact.sha256)
        self.stats.running[manifest.model.version] += 1
        self.stats.outcomes["committed"] += 1
        await self.report(manifest, "committed", metrics={"p95_ms": self._latency()[1]})
        await self.event("update.committed", manifest)
        await self.birth()  # the retained status names the model now served

    # --- MQTT ---------------------------------------------------------------------------------------

    def _latency(self) -> tuple[float, float, float, float]:
        factor = 1.0 if (self.model.version or 0) <= self.spec.model_version else self.spec.regression
        p50 = self.spec.latency_ms * factor * self.rng.uniform(0.9, 1.1)
        return p50, p50 * 1.6, p50 * 2.1, p50 * 3.0

    async def _publish(self, leaf: str, payload: str, retain: bool = False) -> float:
        if self.mqtt is None:
            raise aiomqtt.MqttError("the MQTT session is closing")
        started = time.perf_counter()
        await self.mqtt.publish(device_topic(self.id, leaf), payload, qos=1, retain=retain, timeout=30)
        return (time.perf_counter() - started) * 1000

    async def birth(self) -> None:
        if self.mqtt is None:
            return
        doc = Birth(session=self.session, agent_version=AGENT_VERSION, model=self.model, runtime="onnxruntime",
                    delegate="cpu", device_class=self.spec.device_class,
                    hw={"runtimes": ["onnxruntime"], "arch": "aarch64"})
        try:
            await self._publish("status", doc.model_dump_json(exclude_none=True), retain=True)
        except aiomqtt.MqttError as exc:
            self.stats.error("birth", str(exc))

    async def event(self, kind: str, manifest: Manifest, **extra: object) -> None:
        if self.mqtt is None:
            return
        self.event_seq += 1
        doc = Event(seq=self.event_seq, ts=time.time(), type=kind, model=manifest.model.name,  # type: ignore[call-arg]
                    version=manifest.model.version, sha256=manifest.artifact.sha256,
                    rollout_id=manifest.rollout_id, **extra)
        try:
            await self._publish("events", doc.model_dump_json())
            self.stats.events_sent += 1
            self.stats.acked("events", self.id, self.event_seq)
        except aiomqtt.MqttError as exc:
            self.stats.error("event", str(exc))

    def telemetry(self) -> Telemetry:
        self.telemetry_seq += 1
        fps = self.rng.uniform(9.5, 10.0)
        count = int(fps * self.spec.telemetry_s)
        self.inferences += count
        p50, p95, p99, worst = self._latency()
        return Telemetry(
            seq=self.telemetry_seq, ts=time.time(), model=self.model, runtime="onnxruntime", delegate="cpu",
            inference=InferenceStats(count=count, errors=0, fps=round(fps, 2), latency_ms=LatencySummary(
                p50=round(p50, 3), p95=round(p95, 3), p99=round(p99, 3), max=round(worst, 3))),
            system=SystemStats(cpu_pct=round(self.rng.uniform(15, 45), 1), mem_mb=4096.0,
                               rss_mb=round(self.rng.uniform(80, 120), 1), temp_c=round(self.rng.uniform(45, 65), 1),
                               disk_free_mb=12000.0, uptime_s=round(time.monotonic() - self.started, 1)))

    async def _telemetry_loop(self) -> None:
        next_at = time.monotonic() + self.rng.uniform(0, self.spec.telemetry_s)
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += self.spec.telemetry_s
            document = self.telemetry()
            took = await self._publish("telemetry", document.model_dump_json(exclude_none=True))
            self.stats.publish_ms.append(took)
            self.stats.telemetry_sent += 1
            self.stats.acked("telemetry", self.id, document.seq)

    async def _checkin_loop(self) -> None:
        await self._until_next_checkin(self.rng.uniform(0, self.spec.poll_s))
        while True:
            self.last_checkin = time.monotonic()
            await self.checkin()
            if self.own_http:
                await self.http.close()
            await self._until_next_checkin(self.spec.poll_s * self.rng.uniform(0.9, 1.1))

    async def _until_next_checkin(self, seconds: float) -> None:
        """The poll interval, or less when a check_update arrives (as the agent: at most one pushed check per
        CHECK_MIN_INTERVAL_S; what arrives before it starts, or during a check, is coalesced)."""
        try:
            await asyncio.wait_for(self.wake.wait(), seconds)
        except TimeoutError:
            return
        hold = self.last_checkin + CHECK_MIN_INTERVAL_S - time.monotonic()
        if hold > 0:
            await asyncio.sleep(hold)
        self.wake.clear()

    async def _commands_loop(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray) or len(payload) > COMMAND_MAX_BYTES:
                self.stats.error("command", "not bytes or too big")
                continue
            try:
                command = Command.model_validate_json(payload)
            except ValidationError as exc:
                self.stats.error("command", str(exc).splitlines()[0])
                continue
            if command.type == "check_update":
                self.stats.pushes += 1
                self.stats.push_t.append(time.time())
                self.wake.set()

    async def run(self, stop: asyncio.Event, connect_slots: asyncio.Semaphore,
                  enroll_slots: asyncio.Semaphore) -> None:
        """Enroll, then keep an MQTT session (reconnecting with jittered backoff) until ``stop``."""
        async with enroll_slots:
            await self.enroll()
            if self.own_http:
                await self.http.close()
        self.stats.running[self.model.version or 0] += 1
        checkins = asyncio.create_task(self._checkin_loop())
        backoff = 0.5
        try:
            while not stop.is_set():
                self.session += 1
                will = aiomqtt.Will(device_topic(self.id, "status"),
                                    Will(session=self.session).model_dump_json(), qos=1, retain=True)
                client = aiomqtt.Client(
                    self.spec.mqtt_host, self.spec.mqtt_port, identifier=self.id, will=will, keepalive=60,
                    protocol=aiomqtt.ProtocolVersion.V5 if self.spec.mqtt_v5 else aiomqtt.ProtocolVersion.V311,
                    timeout=30)
                try:
                    async with connect_slots:
                        await client.__aenter__()
                except aiomqtt.MqttError as exc:
                    self.stats.error("mqtt_connect", str(exc))
                    await asyncio.sleep(backoff * self.rng.uniform(0.5, 1.5))
                    backoff = min(backoff * 2, 30.0)
                    continue
                backoff = 0.5
                self.mqtt = client
                self.stats.connects += 1
                self.stats.connected += 1
                telemetry = asyncio.create_task(self._telemetry_loop())
                stopper = asyncio.create_task(stop.wait())
                loops = {telemetry, stopper}
                if self.spec.push:
                    loops.add(asyncio.create_task(self._commands_loop(client)))
                try:
                    if self.spec.push:
                        await client.subscribe(device_topic(self.id, "commands"), qos=1, timeout=30)
                    await self.birth()
                    await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
                    for loop in loops - {stopper}:
                        if loop.done() and not loop.cancelled() and loop.exception() is not None:
                            self.stats.error("mqtt", repr(loop.exception()))
                except aiomqtt.MqttError as exc:
                    self.stats.error("mqtt_subscribe", str(exc))
                finally:
                    for loop in loops:
                        loop.cancel()
                    self.mqtt = None
                    self.stats.connected -= 1
                    try:
                        await client.__aexit__(None, None, None)
                    except aiomqtt.MqttError:
                        pass
        finally:
            checkins.cancel()
