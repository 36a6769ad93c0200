"""The book of gang plans: which member of which group holds which GPUs, until when.

A plan holds a reservation per unbound member (`GpuReservation`: node, GPU indices, expiry).
Reserved GPUs count as busy for every other pod (the store adds them to node states as
records of phase `Reserved`), and a member passes filter only on its own planned node. A
member's reservation ends when it binds (its own record then holds the GPUs), when the plan
expires, or when any member of the group is deleted (the group is then planned again), unless
a member recreated under a new UID (same name, same GPU count) took the reservation over.

A plan made before every member exists (a leader-first controller: LeaderWorkerSet's
`LeaderReady` start-up or exclusive topology creates workers only after the leader is
scheduled or Ready) also holds *absent slots*: GPUs reserved for members not created yet
(`Reserved.absent`, a synthetic uid, the slot's member index when the controller numbers its
members). A member created later claims a slot (`claim`): the one of its index, else any of its
GPU count planned for the same demand.

A group is identified by its name and its members' controller (`objects.gang_identity`): a
pod of another owner using the name is a group of its own, never a member. Terminating and
finished pods are not members (a Terminating one still holds its GPUs until it is gone).

Durability: in cluster mode the store writes each reservation on its member pod
(`kvsched.io/reservation`), so a restarted extender finds the plans again in the pods it lists.
Absent slots have no pod to be written on: they live here only, and a restarted extender plans
the group again (by its declared size) when the next member reaches filter.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from scheduler.core.assignment import GpuPrediction, GpuReservation
from scheduler.state.objects import PodRecord, gang_key

RESERVED_PHASE = "Reserved"


@dataclass(frozen=True, slots=True)
class Reserved:
    """A member's reservation and who the member is (for records and messages)."""

    uid: str
    namespace: str
    name: str
    gpus: int
    reservation: GpuReservation
    # A slot for a member that does not exist yet (uid and name are placeholders).
    absent: bool = False
    # The member index the slot was planned for (LWS worker-index), when members are numbered.
    index: int | None = None
    # The demand key (`PodDemand.key`) an absent slot was planned for: a member claiming it
    # must need the same, or the group is planned again.
    demand_key: tuple[object, ...] | None = None

    def record(self) -> PodRecord:
        """The reservation as a pod record holding the GPUs on its node."""
        node = self.reservation.node
        return PodRecord(
            uid=self.uid,
            namespace=self.namespace,
            name=self.name,
            node=node,
            gpus=len(self.reservation.indices),
            prediction=GpuPrediction(node, self.reservation.indices),
            model=None,
            phase=RESERVED_PHASE,
            gang=gang_key(self.reservation.gang),
            gang_id=self.reservation.gang,
        )


class GangBook:
    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        self.clock = clock
        self._plans: dict[str, dict[str, Reserved]] = {}
        self._gang_of: dict[str, str] = {}

    def reservation(self, uid: str) -> Reserved | None:
        gang = self._gang_of.get(uid)
        return self._plans[gang].get(uid) if gang is not None else None

    def plan(self, gang: str) -> dict[str, Reserved] | None:
        return self._plans.get(gang)

    def expired(self) -> list[str]:
        """Gangs with a reservation past its expiry."""
        moment = self.clock()
        return [
            gang
            for gang, members in self._plans.items()
            if any(r.reservation.expires <= moment for r in members.values())
        ]

    def record(self, gang: str, members: Iterable[Reserved]) -> None:
        self.release(gang)
        plan = {r.uid: r for r in members}
        if plan:
            self._plans[gang] = plan
            self._gang_of.update(dict.fromkeys(plan, gang))

    def restore(self, reserved: Reserved) -> None:
        """A reservation found on a listed pod (after a restart)."""
        gang = reserved.reservation.gang
        self._plans.setdefault(gang, {})[reserved.uid] = reserved
        self._gang_of[reserved.uid] = gang

    def settle(self, uid: str) -> Reserved | None:
        """The member bound: its reservation is no longer needed."""
        gang = self._gang_of.pop(uid, None)
        if gang is None:
            return None
        reserved = self._plans[gang].pop(uid, None)
        if not self._plans[gang]:
            del self._plans[gang]
        return reserved

    def find(self, gang: str, namespace: str, name: str) -> Reserved | None:
        """The plan's reservation for the pod of that name (whatever its UID); absent slots are
        not pods and are never found here (see `claim`)."""
        for reserved in self._plans.get(gang, {}).values():
            if not reserved.absent and reserved.namespace == namespace and reserved.name == name:
                return reserved
        return None

    def slot_for(
        self,
        gang: str,
        *,
        name: str,
        gpus: int,
        index: int | None,
        demand_key: tuple[object, ...],
    ) -> Reserved | None:
        """The absent slot a newly created member takes: the slot of its member index if it
        has one, else the slot planned under its name, else the first (by index, then name)
        slot of its GPU count; only a slot planned for the same demand. None if none fits."""
        slots = sorted(
            (r for r in self._plans.get(gang, {}).values() if r.absent and r.gpus == gpus),
            key=lambda r: (r.index is None, r.index or 0, r.name),
        )
        if index is not None and any(r.index == index for r in slots):
            slots = [r for r in slots if r.index == index]
        elif any(r.name == name for r in slots):
            slots = [r for r in slots if r.name == name]
        for slot in slots:
            if slot.demand_key == demand_key:
                return slot
        return None

    def claim(self, slot: Reserved, member: Reserved) -> Reserved:
        """`member` takes the absent `slot` (same node and GPUs)."""
        gang = self._gang_of.pop(slot.uid)
        del self._plans[gang][slot.uid]
        self._plans[gang][member.uid] = member
        self._gang_of[member.uid] = gang
        return member

    def absent(self, gang: str) -> list[Reserved]:
        """The plan's slots for members not created yet."""
        return [r for r in self._plans.get(gang, {}).values() if r.absent]

    def adopt(self, old_uid: str, new_uid: str) -> Reserved | None:
        """A member recreated under a new UID takes over its earlier incarnation's
        reservation (same GPUs, same expiry)."""
        gang = self._gang_of.pop(old_uid, None)
        if gang is None:
            return None
        reserved = self._plans[gang].pop(old_uid)
        adopted = dataclasses.replace(reserved, uid=new_uid)
        self._plans[gang][new_uid] = adopted
        self._gang_of[new_uid] = gang
        return adopted

    def release(self, gang: str) -> list[Reserved]:
        """Drop a whole plan; returns what was reserved (the nodes to rebuild)."""
        members = self._plans.pop(gang, {})
        for uid in members:
            self._gang_of.pop(uid, None)
        return list(members.values())

    def gang_of(self, uid: str) -> str | None:
        return self._gang_of.get(uid)

    def records_on(self, node: str) -> list[PodRecord]:
        return [
            r.record()
            for members in self._plans.values()
            for r in members.values()
            if r.reservation.node == node
        ]

    def gangs_on(self, node: str) -> set[str]:
        """The plans that hold GPUs on `node`."""
        return {
            gang
            for gang, members in self._plans.items()
            if any(r.reservation.node == node for r in members.values())
        }

    def gangs(self) -> list[str]:
        return list(self._plans)
