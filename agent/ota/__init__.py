"""Over-the-air model updates on the device: see docs/ota.md."""

from edgefleet.agent.ota.client import UpdateClient
from edgefleet.agent.ota.slots import SlotInfo, SlotStore
from edgefleet.agent.ota.state import RECOVERY, TRANSITIONS, State, StateRecord, StateStore, Trigger, next_state

__all__ = ["RECOVERY", "TRANSITIONS", "SlotInfo", "SlotStore", "State", "StateRecord", "StateStore", "Trigger",
           "UpdateClient", "next_state"]
