"""The agent's telemetry over MQTT: birth and will, metrics, events, results, commands, store and forward.

    Telemetry          the service the daemon runs (agent/telemetry/service.py)
    LatencyHistogram   fixed log-spaced buckets, O(1) record (histogram.py)
    Spool              bounded SQLite WAL queue with persisted seq (spool.py)
    Backoff            exponential backoff with full jitter (backoff.py)
    MqttLink           one broker connection at a time, MQTT 5 -> 3.1.1 fallback (link.py)
"""

from edgefleet.agent.telemetry.backoff import Backoff
from edgefleet.agent.telemetry.commands import CommandDispatcher
from edgefleet.agent.telemetry.histogram import LatencyHistogram, Summary
from edgefleet.agent.telemetry.link import MqttLink
from edgefleet.agent.telemetry.service import Telemetry
from edgefleet.agent.telemetry.spool import Spool
from edgefleet.agent.telemetry.system import SystemSampler, read_temperature_c

__all__ = [
    "Backoff",
    "CommandDispatcher",
    "LatencyHistogram",
    "MqttLink",
    "Spool",
    "Summary",
    "SystemSampler",
    "Telemetry",
    "read_temperature_c",
]
