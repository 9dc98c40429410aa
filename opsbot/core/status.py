"""Service statuses and which operations each allows."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    DEPLOYING = "deploying"
    RUNNING = "running"
    CONCERNING = "concerning"
    ABNORMAL = "abnormal"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DELETING = "deleting"

    @property
    def label(self) -> str:
        return self.value.capitalize()


#: Statuses whose instances hold capacity in their pool.
HOLDS_CAPACITY = frozenset(
    {Status.DEPLOYING, Status.RUNNING, Status.CONCERNING, Status.ABNORMAL, Status.STOPPING}
)
CAN_START = frozenset({Status.STOPPED, Status.FAILED})
CAN_STOP = frozenset(
    {Status.RUNNING, Status.DEPLOYING, Status.CONCERNING, Status.ABNORMAL, Status.FAILED}
)
CAN_MODIFY = frozenset(set(Status) - {Status.DEPLOYING, Status.DELETING, Status.STOPPING})
