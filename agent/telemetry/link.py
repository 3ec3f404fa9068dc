"""The connection to the broker: connect, fall back from MQTT 5 to 3.1.1, reconnect with jittered backoff.

Everything here runs on the telemetry worker thread, one ``step()`` at a time, so paho is only
ever driven from one thread. Each connection attempt gets a fresh paho client: nothing paho
queued for an old connection is re-sent behind the spool's back (the spool re-sends what was
not acknowledged, in order). The will carries the connection's ``session``, asked for before
each attempt.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgefleet.agent.config import MqttSection
from edgefleet.agent.telemetry.backoff import Backoff

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt
    from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

UNSUPPORTED_PROTOCOL = (1, 132)  # 3.1.1 "unacceptable protocol version" / MQTT 5 0x84
SLICE_S = 0.1  # the longest the worker sleeps or waits on the socket without checking its stop flag
# paho's values (mqtt.MQTTv311, mqtt.MQTTv5, MQTTErrorCode.MQTT_ERR_SUCCESS): paho and ssl (~9 MB, a tenth of a
# second) are imported by the first connection attempt, on the worker thread, after the daemon is serving
MQTT_V311, MQTT_V5 = 4, 5
ERR_SUCCESS = 0


@dataclass
class LinkHandlers:
    will: Callable[[int], tuple[str, bytes]]  # session -> (topic, payload), set at connect
    next_session: Callable[[], int]
    connected: Callable[[int], None]  # session; the link is usable (subscribe, publish birth)
    disconnected: Callable[[], None]
    published: Callable[[int, bool], None]  # mid, accepted by the broker
    message: Callable[[str, bytes], None]


class MqttLink:
    def __init__(self, cfg: MqttSection, client_id: str, handlers: LinkHandlers,
                 backoff: Backoff | None = None) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.h = handlers
        self.backoff = backoff or Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s)
        self.protocol = MQTT_V311 if cfg.protocol == "3.1.1" else MQTT_V5
        self.session = 0
        self.connects = 0
        self.last_error: str | None = None
        self._client: mqtt.Client | None = None
        self._state = "idle"  # idle | connecting | connected
        self._deadline = 0.0
        self._next_attempt = 0.0
        self._v5_proven = False  # a v5 CONNACK was seen: never fall back on a mere timeout

    @property
    def connected(self) -> bool:
        return self._state == "connected"

    @property
    def protocol_name(self) -> str:
        return "5" if self.protocol == MQTT_V5 else "3.1.1"

    # --- driving ---------------------------------------------------------------------------------

    def step(self, stop: threading.Event) -> None:
        """Do at most ~SLICE_S of work: wait for an attempt, attempt, or run paho's network loop."""
        now = time.monotonic()
        if self._state == "idle":
            if now < self._next_attempt:
                stop.wait(min(SLICE_S, self._next_attempt - now))
                return
            self._attempt()
            return
        assert self._client is not None
        rc = self._client.loop(timeout=SLICE_S)
        if self._client is None:  # a callback dropped the connection
            return
        if rc != ERR_SUCCESS:
            from paho.mqtt.client import error_string

            self._fail(f"connection lost ({error_string(rc)})")
        elif self._state == "connecting" and time.monotonic() > self._deadline:
            self._fail("no CONNACK within the connect timeout")

    def _attempt(self) -> None:
        import ssl

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        self.session = self.h.next_session()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=MQTTProtocolVersion(self.protocol),
                             clean_session=True if self.protocol != MQTT_V5 else None)
        client.connect_timeout = self.cfg.connect_timeout_s
        client.max_inflight_messages_set(self.cfg.max_inflight)
        client.max_queued_messages_set(0)
        topic, payload = self.h.will(self.session)
        client.will_set(topic, payload, qos=1, retain=True)
        if self.cfg.username is not None:
            client.username_pw_set(self.cfg.username, self.cfg.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        try:
            if self.cfg.tls:
                client.tls_set(ca_certs=_path(self.cfg.ca_certs), certfile=_path(self.cfg.certfile),
                               keyfile=_path(self.cfg.keyfile), cert_reqs=ssl.CERT_REQUIRED)
            kwargs: dict[str, Any] = {"clean_start": True} if self.protocol == MQTT_V5 else {}
            client.connect(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s, **kwargs)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self._client = client
            self._fail(f"cannot connect to {self.cfg.host}:{self.cfg.port}: {exc}")
            return
        self._client = client
        self._state = "connecting"
        self._deadline = time.monotonic() + self.cfg.connect_timeout_s

    def _fail(self, reason: str, *, retry_now: bool = False) -> None:
        was_connected = self._state == "connected"
        if self._state == "connecting" and self.cfg.protocol == "auto" and not self._v5_proven:
            # TCP was up but no CONNACK came: some 3.1.1 brokers hang or hang up on a v5 CONNECT
            self.protocol = MQTT_V311 if self.protocol == MQTT_V5 else MQTT_V5
        if reason != self.last_error or was_connected:
            log.warning("MQTT: %s", reason)
        self.last_error = reason
        self._drop_client()
        self._state = "idle"
        delay = 0.0 if retry_now else self.backoff.next_delay()
        self._next_attempt = time.monotonic() + delay
        if was_connected:
            self.h.disconnected()

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.on_disconnect = None
            try:
                client.disconnect()
            except Exception:
                pass
            sock = client.socket()
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass

    # --- paho callbacks (on this thread, inside loop()) ------------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode,
                    _props: Any) -> None:
        if client is not self._client:
            return
        if reason.is_failure:
            self._state = "idle"  # a CONNACK came: not a case for the missing-CONNACK fallback
            if (self.cfg.protocol == "auto" and self.protocol == MQTT_V5
                    and reason.value in UNSUPPORTED_PROTOCOL):
                log.info("MQTT: broker does not speak MQTT 5; falling back to 3.1.1")
                self.protocol = MQTT_V311
                self._fail("broker refused MQTT 5", retry_now=True)
            else:
                self._fail(f"broker refused the connection: {reason}")
            return
        self._state = "connected"
        self._v5_proven = self._v5_proven or self.protocol == MQTT_V5
        self.connects += 1
        self.last_error = None
        self.backoff.reset()
        log.info("MQTT: connected to %s:%d (MQTT %s, session %d)", self.cfg.host, self.cfg.port,
                 self.protocol_name, self.session)
        self.h.connected(self.session)

    def _on_disconnect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode,
                       _props: Any) -> None:
        if client is self._client and self._state != "idle":
            self._fail(f"disconnected ({reason})")

    def _on_publish(self, client: mqtt.Client, _userdata: Any, mid: int, reason: ReasonCode,
                    _props: Any) -> None:
        if client is self._client:
            self.h.published(mid, not reason.is_failure)

    def _on_message(self, client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if client is self._client:
            self.h.message(msg.topic, bytes(msg.payload))

    # --- used by the service (same thread) -------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int | None:
        """Hand a message to paho; its mid, or None when not connected."""
        if self._state != "connected" or self._client is None:
            return None
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != ERR_SUCCESS:
            return None
        return int(info.mid)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        if self._client is not None:
            self._client.subscribe(topic, qos=qos)

    def close(self, flush: Callable[[], bool], timeout: float) -> None:
        """Run the loop until ``flush()`` is true or ``timeout`` passes, then disconnect cleanly."""
        deadline = time.monotonic() + timeout
        while self._client is not None and self._state == "connected" and not flush():
            if time.monotonic() > deadline:
                break
            if self._client.loop(timeout=0.05) != ERR_SUCCESS:
                break
        self._drop_client()
        self._state = "idle"


def _path(value: object) -> str | None:
    return None if value is None else str(value)
