"""Over-the-air model updates on the device: see docs/ota.md."""

from agent.ota.client import UpdateClient
from agent.ota.slots import SlotInfo, SlotStore
from agent.ota.state import RECOVERY, TRANSITIONS, State, StateRecord, StateStore, Trigger, next_state

__all__ = ["RECOVERY", "TRANSITIONS", "SlotInfo", "SlotStore", "State", "StateRecord", "StateStore", "Trigger",
           "UpdateClient", "next_state"]
