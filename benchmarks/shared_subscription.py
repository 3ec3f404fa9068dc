"""What a broker does with QoS 1 telemetry in flight to a shared subscriber that dies (SIGKILL).

Two subscriber processes share ``$share/edgefleet/bench/+/telemetry`` on a real Mosquitto. Each
"commits" what it receives to a file every ``--commit-interval`` seconds (the server's batched
writer) and then, depending on the mode, acknowledges it. A publisher sends ``--messages`` QoS 1
messages at ``--rate``/s; one subscriber is killed with SIGKILL a third of the way through and,
in the modes that say so, started again with the same client id ``--down`` seconds later.

Modes (each a fresh broker):
- ``clean-autoack``: clean start, PUBACK on receipt (paho's default; the server before scale-out);
- ``clean-manualack``: clean start, PUBACK only after the commit;
- ``persistent-restart``: clean start off, session expiry, PUBACK after the commit, restarted;
- ``persistent-gone``: the same, never restarted (its session outlives the run).

For each: published (PUBACK from the broker), committed once, lost, committed twice, and how many
messages reached the killed subscriber's session while it was down (Mosquitto keeps choosing it).

    .venv/bin/python benchmarks/shared_subscription.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOPIC = "edgefleet/bench/{}/telemetry"
SHARED = "$share/edgefleet/edgefleet/bench/+/telemetry"
MODES = ("clean-autoack", "clean-manualack", "persistent-restart", "persistent-gone")


def subscriber(port: int, client_id: str, out: Path, persistent: bool, manual_ack: bool,
               commit_interval: float) -> None:
    """Runs in its own process until killed: receive, commit to ``out`` every interval, then PUBACK."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    pending: list[tuple[int, int]] = []  # (mid, seq) received and not committed
    lock = threading.Lock()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                         manual_ack=manual_ack)

    def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with lock:
            pending.append((message.mid, int(message.payload)))

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, _reason: Any, _p: Any = None) -> None:
        c.subscribe(SHARED, qos=1)

    client.on_message = on_message
    client.on_connect = on_connect
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600 if persistent else 0
    props.ReceiveMaximum = 65535
    client.connect("127.0.0.1", port, clean_start=not persistent, properties=props)
    client.loop_start()
    with out.open("a") as handle:
        while True:
            time.sleep(commit_interval)
            with lock:
                batch, pending[:] = list(pending), []
            if not batch:
                continue
            handle.write("".join(f"{seq}\n" for _mid, seq in batch))
            handle.flush()
            os.fsync(handle.fileno())
            if manual_ack:
                for mid, _seq in batch:
                    client.ack(mid, 1)


def _spawn(port: int, client_id: str, out: Path, mode: str, commit_interval: float) -> subprocess.Popen[bytes]:
    persistent = mode.startswith("persistent")
    manual = mode != "clean-autoack"
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r}); "
            f"from benchmarks.shared_subscription import subscriber; "
            f"subscriber({port}, {client_id!r}, __import__('pathlib').Path({str(out)!r}), {persistent}, {manual}, "
            f"{commit_interval})")
    return subprocess.Popen([sys.executable, "-c", code])


def _publish(port: int, messages: int, rate: float, on_progress: Any) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    acked = 0
    lock = threading.Lock()

    def on_publish(*_args: Any) -> None:
        nonlocal acked
        with lock:
            acked += 1

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher", protocol=mqtt.MQTTv5)
    client.on_publish = on_publish
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.monotonic()
    last = None
    for seq in range(messages):
        wait = started + seq / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        last = client.publish(TOPIC.format(seq % 100), str(seq), qos=1)
        on_progress(seq)
    if last is not None:
        last.wait_for_publish(60)
    time.sleep(0.5)
    client.loop_stop()
    client.disconnect()
    return acked


def _count(paths: list[Path]) -> dict[int, int]:
    seen: dict[int, int] = {}
    for path in paths:
        if path.exists():
            for line in path.read_text().split():
                seen[int(line)] = seen.get(int(line), 0) + 1
    return seen


def run_mode(mode: str, *, messages: int, rate: float, down_s: float, commit_interval: float,
             broker_conf: str) -> dict[str, Any]:
    from tests.support.broker import Mosquitto

    with tempfile.TemporaryDirectory(prefix="shared-sub-") as tmp:
        root = Path(tmp)
        broker = Mosquitto(root, extra_conf=broker_conf).start()
        files = [root / "sub-a.txt", root / "sub-b.txt"]
        subs = [_spawn(broker.port, f"bench-sub-{i}", files[i], mode, commit_interval) for i in range(2)]
        time.sleep(1.5)  # both connected and subscribed
        kill_at, restart_at = messages // 3, None
        if mode == "persistent-restart":
            restart_at = kill_at + int(down_s * rate)
        events: dict[str, float] = {}

        def on_progress(seq: int) -> None:
            if seq == kill_at:
                subs[0].send_signal(signal.SIGKILL)
                subs[0].wait()
                events["killed_at_seq"] = seq
                events["committed_by_killed_before_kill"] = len(_count(files[:1]))
            if restart_at is not None and seq == restart_at:
                subs[0] = _spawn(broker.port, "bench-sub-0", files[0], mode, commit_interval)
                events["restarted_at_seq"] = seq

        try:
            published = _publish(broker.port, messages, rate, on_progress)
            time.sleep(3 * commit_interval + 2.0)  # the last commits and any redelivery
            seen = _count(files)
        finally:
            for sub in subs:
                if sub.poll() is None:
                    sub.send_signal(signal.SIGKILL)
                    sub.wait()
            broker.stop()
        lost = [seq for seq in range(messages) if seq not in seen]
        after_kill = [seq for seq in lost if seq > kill_at]
        return {"mode": mode, "published": published, "committed_once": sum(1 for n in seen.values() if n == 1),
                "lost": len(lost), "lost_sent_after_kill": len(after_kill),
                "duplicated": sum(n - 1 for n in seen.values() if n > 1), **events}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--rate", type=float, default=1000.0, help="messages per second")
    parser.add_argument("--down", type=float, default=2.0, help="seconds the killed subscriber stays down")
    parser.add_argument("--commit-interval", type=float, default=0.5)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--broker-conf", default="max_queued_messages 0\nmax_inflight_messages 0\n",
                        help="lines added to mosquitto.conf")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = [run_mode(mode, messages=args.messages, rate=args.rate, down_s=args.down,
                        commit_interval=args.commit_interval, broker_conf=args.broker_conf.replace("\\n", "\n"))
               for mode in args.modes.split(",")]
    version = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()[:1]
    doc = {"broker": version[0] if version else "mosquitto", "messages": args.messages, "rate": args.rate,
           "down_s": args.down, "commit_interval_s": args.commit_interval, "results": results}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"{doc['broker']}: {args.messages} QoS 1 messages at {args.rate:g}/s, one of two shared subscribers "
              f"SIGKILLed at message {args.messages // 3}")
        print("| mode | published | committed once | lost | lost (sent after the kill) | duplicated |")
        print("|---|---|---|---|---|---|")
        for r in results:
            print(f"| {r['mode']} | {r['published']} | {r['committed_once']} | {r['lost']} | "
                  f"{r['lost_sent_after_kill']} | {r['duplicated']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
