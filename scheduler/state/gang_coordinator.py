"""The gang coordinator: all-or-nothing groups planned, held, adopted, released; writes as effects.

A gang's first member to reach filter plans the whole group (`core.gang.plan_gang`) on the
nodes offered, by the group's declared size: members that do not exist yet (a leader-first
controller creates workers only once the leader is scheduled or Ready) are planned as *absent*
members shaped like the present ones. The plan reserves each unbound member's GPUs in the gang
book (scheduler.state.gangs) until the member binds, the plan expires (`ttl_s` for members
that exist, `absent_ttl_s` for absent slots: long enough for a leader to pull its image, load
its weights and turn Ready), or a member is deleted (then the group is planned again, unless
the member was recreated under a new UID and takes its predecessor's reservation over). A
member created after the plan claims an absent slot (its LWS worker-index, else any slot of
its size planned for the same demand); one that fits no slot makes the group be planned again
(members already bound keep their domain).

Every method changes state only: it runs with the store's lock held and **returns** the API
writes the change calls for (`effects.WriteReservation`: a member's reservation annotation
written or cleared) for the store to submit after releasing the lock. Nothing here performs
I/O, so a filter that plans a gang never waits on the API server, and neither does any other
verb waiting for the lock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence

from scheduler.core.assignment import GpuReservation
from scheduler.core.demand import PodDemand, parse_demand
from scheduler.core.gang import GangFailure, GangMember, plan_gang, topology_key_for
from scheduler.core.placement import ScoringConfig
from scheduler.models.catalog import Catalog
from scheduler.state.contracts import FilterResult
from scheduler.state.effects import Effect, WriteReservation
from scheduler.state.gangs import GangBook, Reserved
from scheduler.state.nodecache import NodeCache
from scheduler.state.objects import PodRecord
from scheduler.state.pending import PendingPods

log = logging.getLogger(__name__)

__all__ = ["GangCoordinator"]


def _names(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _write(reserved: Reserved) -> Effect:
    return WriteReservation(
        reserved.namespace, reserved.name, reserved.reservation.gang, reserved.reservation
    )


def _clear(reserved: Reserved) -> Effect:
    return WriteReservation(reserved.namespace, reserved.name, reserved.reservation.gang, None)


def _size_of(demand: PodDemand) -> int | None:
    return demand.gang.size if demand.gang is not None else None


def _subgroup_of(index: int | None, size: int | None, subgroup_size: int | None) -> int | None:
    """The subgroup LWS's pod webhook gives worker `index` (leader: 0) of a group of `size`."""
    if index is None or size is None or not subgroup_size:
        return None
    if index == 0:
        return 0
    if (size - 1) % subgroup_size == 0:  # the leader is an extra pod of subgroup 0
        return (index - 1) // subgroup_size
    return index // subgroup_size


class GangCoordinator:
    def __init__(
        self,
        cache: NodeCache,
        pending: PendingPods,
        catalog: Catalog,
        scoring: ScoringConfig,
        clock: Callable[[], dt.datetime],
        ttl_s: float,
        absent_ttl_s: float = 600.0,
        pod_groups: Mapping[str, int] | None = None,
    ) -> None:
        self.cache = cache
        self.pending = pending
        self.catalog = catalog
        self.scoring = scoring
        self.clock = clock
        self.ttl_s = ttl_s
        self.absent_ttl_s = absent_ttl_s
        # PodGroup minMember by `namespace/name` (the store's; see state.podgroups).
        self.pod_groups: Mapping[str, int] = pod_groups if pod_groups is not None else {}
        self.book = GangBook(clock)
        # LWS exclusive subgroups: the values of the subgroup key each plan holds (gang id ->
        # (key, values)), kept apart from other groups' plans (LWS's anti-affinity). Entries of
        # plans no longer in the book are ignored and dropped lazily.
        self._subdomains: dict[str, tuple[str, frozenset[str]]] = {}

    # ---- queries -------------------------------------------------------------------------

    def reservation(self, uid: str) -> Reserved | None:
        return self.book.reservation(uid)

    def reservation_count(self) -> int:
        """GPU reservations of gang plans still waiting for their members to bind."""
        return sum(len(self.book.plan(g) or {}) for g in self.book.gangs())

    def active(self) -> bool:
        return bool(self.book.gangs())

    def gang_id(self, demand: PodDemand) -> str:
        """The identity of the pod's group (see objects.gang_identity)."""
        assert demand.gang is not None
        found = self.pending.gang_id(demand.uid)
        if found is None:
            record = self.cache.pods.get(demand.uid)
            found = record.gang_id if record is not None else None
        return found or demand.gang.key

    # ---- kept in step with the cache (lock held) ------------------------------------------

    def track(self, record: PodRecord) -> None:
        """A pod as listed or watched (the cache's `on_put`): a bound member's reservation is
        settled; a reservation found on an unbound member (a plan made before a restart of
        ours) is restored, if it is one of our plans for that pod."""
        if record.node is not None:
            if self.book.settle(record.uid) is not None:
                log.info("gang %s: member %s bound", record.gang, record.ref)
            return
        reservation = record.reservation
        moment = self.clock()
        if (
            reservation is None
            or not record.gang_member
            or self.book.reservation(record.uid) is not None
            or reservation.expires <= moment
        ):
            return
        if (
            reservation.gang != record.gang_id
            or len(reservation.indices) != record.gpus
            or reservation.expires > moment + dt.timedelta(seconds=self.ttl_s)
        ):
            # Not one of our plans for this pod (any pod can carry any annotation): a
            # reservation must name the pod's own group, its GPU count, and expire within a
            # plan's lifetime, or it could hold GPUs for anyone, for ever.
            log.info("pod %s: ignoring a reservation that is not its group's plan", record.ref)
            return
        self.book.restore(
            Reserved(record.uid, record.namespace, record.name, record.gpus, reservation)
        )
        if self.cache.has_node_object(reservation.node):
            self.cache.rebuild(reservation.node)

    def records_on(self, node: str) -> list[PodRecord]:
        """The GPUs plans hold on `node`, as records (the cache's `reserved_on`)."""
        return self.book.records_on(node)

    def pod_deleted(self, uid: str) -> list[Effect]:
        """A pod is being deleted (before the cache drops it; lock held): a member's deletion
        releases its group's plan, unless a recreated member took its reservation over."""
        gang = self.book.gang_of(uid)
        known = self.cache.pods.get(uid)
        if gang is None and known is not None and known.gang_member:
            assert known.gang_id is not None
            plan = self.book.plan(known.gang_id)
            # A member recreated under a new UID took over its reservation: the plan stands.
            # A pod that was no longer a member (Terminating) changes nothing.
            if plan is not None and all(r.name != known.name for r in plan.values()):
                gang = known.gang_id
        if gang is not None and self.book.plan(gang) is not None:
            log.info("gang %s: member %s deleted; releasing its plan", gang, uid)
            return self.release(gang)
        return []

    def release(self, gang: str) -> list[Effect]:
        """Drop a plan: its GPUs are free again, and its annotations are to be cleared (best
        effort: an expired annotation is ignored anyway)."""
        released = self.book.release(gang)
        for node in {r.reservation.node for r in released}:
            self.cache.rebuild(node)
        return [_clear(r) for r in released if not r.absent]

    def expire(self) -> list[Effect]:
        effects: list[Effect] = []
        for gang in self.book.expired():
            log.info("gang %s: plan expired before every member bound; releasing", gang)
            effects += self.release(gang)
        return effects

    # ---- filter (lock held) ----------------------------------------------------------------

    def filter(self, demand: PodDemand, names: Sequence[str]) -> tuple[FilterResult, list[Effect]]:
        """A gang member's filter: its planned node passes, every other node fails; the group
        is planned first if it has no plan yet (or one that does not know this member)."""
        assert demand.gang is not None
        effects = self.expire()
        gang_id = self.gang_id(demand)
        reserved = self.book.reservation(demand.uid)
        if reserved is None:
            reserved = self._adopt(demand, gang_id, effects)
        if reserved is None:
            reserved = self._claim(demand, gang_id, effects)
        if reserved is None:
            if self.book.plan(gang_id) is not None:
                # A member the plan does not know (a replacement): plan the group again.
                effects += self.release(gang_id)
            reason = self._plan(demand, names, gang_id, effects)
            if reason is not None:
                result = FilterResult([], dict.fromkeys(names, reason), {}, {"gang": len(names)})
                return result, effects
            reserved = self.book.reservation(demand.uid)
            assert reserved is not None
        node = reserved.reservation.node
        elsewhere = f"gang {demand.gang.key}: {demand.name} is planned on {node}"
        failed = {n: elsewhere for n in names if n != node}
        if node not in names:
            failed[node] = f"gang {demand.gang.key}: planned node {node} was not offered"
        passed = [node] if node in names else []
        return FilterResult(passed, {}, failed, {"gang": len(failed)}), effects

    def _adopt(self, demand: PodDemand, gang_id: str, effects: list[Effect]) -> Reserved | None:
        """A member recreated under a new UID (same name, same GPU count) takes over its
        earlier incarnation's reservation instead of forcing the group to be planned again."""
        earlier = self.book.find(gang_id, demand.namespace, demand.name)
        if earlier is None or earlier.uid == demand.uid or earlier.gpus != demand.gpus:
            return None
        adopted = self.book.adopt(earlier.uid, demand.uid)
        if adopted is None:
            return None
        log.info(
            "gang %s: %s recreated (uid %s); it keeps its plan", gang_id, demand.ref, demand.uid
        )
        effects.append(_write(adopted))
        return adopted

    def _claim(self, demand: PodDemand, gang_id: str, effects: list[Effect]) -> Reserved | None:
        """A member created after its group was planned takes the absent slot planned for it."""
        slot = self.book.slot_for(
            gang_id,
            name=demand.name,
            gpus=demand.gpus,
            index=demand.gang_index,
            demand_key=demand.key,
        )
        if slot is None:
            return None
        expires = self.clock() + dt.timedelta(seconds=self.ttl_s)
        member = Reserved(
            demand.uid,
            demand.namespace,
            demand.name,
            demand.gpus,
            GpuReservation(gang_id, slot.reservation.node, slot.reservation.indices, expires),
            index=slot.index,
        )
        self.book.claim(slot, member)
        self.cache.rebuild(slot.reservation.node)
        log.info(
            "gang %s: %s takes the slot held for it on %s",
            gang_id,
            demand.ref,
            slot.reservation.node,
        )
        effects.append(_write(member))
        return member

    def _absent_members(
        self,
        demand: PodDemand,
        gang_id: str,
        unbound: list[PodDemand],
        bound: list[PodRecord],
        missing: int,
    ) -> list[GangMember]:
        """Stand-ins for the `missing` members that do not exist yet: shaped like a present
        worker (an unbound member whose index is not 0), else like the asking member; numbered
        by the member indices nobody holds when the controller numbers its members (LWS)."""
        template = next(
            (d for d in unbound if d.gang_index is not None and d.gang_index != 0), demand
        )
        indices: list[int | None] = []
        taken = {d.gang_index for d in unbound}
        for record in bound:
            obj = self.cache.pod_object(record.namespace, record.name)
            if obj is not None:
                taken.add(parse_demand(obj, self.catalog, self.pod_groups).gang_index)
        if any(d.gang_index is not None for d in unbound):
            size = len(unbound) + len(bound) + missing
            free: list[int | None] = [i for i in range(size) if i not in taken]
            indices = free[:missing]
        indices += [None] * (missing - len(indices))
        leader = next((d.name for d in unbound if d.gang_index == 0), None)
        absent: list[GangMember] = []
        for k, index in enumerate(indices):
            number = index if index is not None else k + 1
            name = f"{leader}-{index}" if leader and index is not None else f"(absent #{number})"
            uid = f"absent:{gang_id}#{number}"
            stand_in = dataclasses.replace(
                template,
                uid=uid,
                name=name,
                gang_index=index,
                subgroup=_subgroup_of(index, _size_of(template), template.subgroup_size),
            )
            absent.append(GangMember(uid, name, stand_in))
        return absent

    def _members(self, demand: PodDemand, gang_id: str) -> tuple[list[PodDemand], list[PodRecord]]:
        """(unbound members' demands, bound members) of the pod's group, as far as known.

        Members are the pods of the same group identity (name and controller) that are neither
        finished nor Terminating, one per pod name: a member recreated under a new UID
        replaces its earlier incarnation, which may still be in the view (its DELETE on its
        way) or in the filter's memory (a DELETE the informer never saw)."""
        pods = self.cache.pods
        unbound: dict[str, PodDemand] = {demand.name: demand}
        bound: dict[str, PodRecord] = {}
        for record in list(pods.values()):
            if record.gang_id != gang_id or not record.gang_member:
                continue
            if record.name == demand.name and record.uid != demand.uid:
                continue  # the asking pod's earlier incarnation
            if record.node is not None:
                bound[record.name] = record
                continue
            if record.name not in unbound and record.name not in bound:
                obj = self.cache.pod_object(record.namespace, record.name)
                if obj is not None:
                    unbound[record.name] = parse_demand(obj, self.catalog, self.pod_groups)
        for seen in self.pending.demands():
            if (
                seen.gang is None
                or seen.name in unbound
                or seen.name in bound
                or (self.pending.gang_id(seen.uid) or seen.gang.key) != gang_id
            ):
                continue
            known = pods.get(seen.uid)
            if known is None or (known.node is None and known.gang_member):
                unbound[seen.name] = seen
        return [d for name, d in unbound.items() if name not in bound], list(bound.values())

    def _plan(
        self, demand: PodDemand, names: Sequence[str], gang_id: str, effects: list[Effect]
    ) -> str | None:
        """Plan the pod's whole group; None on success, else the reason every node fails."""
        assert demand.gang is not None
        gang = demand.gang
        unbound, bound = self._members(demand, gang_id)
        sizes: dict[int | None, list[str]] = {}
        for d in unbound:
            sizes.setdefault(d.gang.size if d.gang is not None else None, []).append(d.name)
        for record in bound:
            size = record.gang_size  # the member's own annotation
            if size is None and gang.source == "pod-group":
                size = self.pod_groups.get(gang.key)  # the PodGroup's minMember, as for `gang`
            sizes.setdefault(size, []).append(record.name)
        if len(sizes) > 1:
            return f"gang {gang.key}: members disagree on kvsched.io/gang-size: " + " vs ".join(
                f"{'unset' if size is None else size} ({_names(members)})"
                for size, members in sorted(sizes.items(), key=lambda item: item[0] or 0)
            )
        if gang.size is None:
            return (
                f"gang {gang.key} has no size: set kvsched.io/gang-size (or the "
                "LeaderWorkerSet size annotation) on its members, or create its PodGroup "
                "with spec.minMember"
            )
        total = len(unbound) + len(bound)
        if total > gang.size:
            return f"gang {gang.key}: {total} members exist but kvsched.io/gang-size is {gang.size}"
        entries = self.cache.entries
        nodes = [entries[n].state for n in names if n in entries]
        key = topology_key_for(demand.topology_key, nodes)
        sub_key = next((d.subgroup_key for d in unbound if d.subgroup_key is not None), None)
        pinned: dict[int, str] = {}
        if sub_key is not None:
            # Bound members fix their subgroup's value; kube-scheduler offers the asking
            # member no node there (LWS's anti-affinity), so those nodes are added back.
            for record in bound:
                obj = self.cache.pod_object(record.namespace, record.name)
                value = (
                    entries[record.node].state.labels.get(sub_key)
                    if (record.node in entries)
                    else None
                )
                if obj is None or value is None:
                    continue
                index = parse_demand(obj, self.catalog, self.pod_groups).subgroup
                if index is not None:
                    pinned.setdefault(index, value)
            offered = {n.name for n in nodes}
            nodes += [
                e.state
                for name, e in entries.items()
                if name not in offered and e.state.labels.get(sub_key) in pinned.values()
            ]
        if bound and key is not None and key != sub_key:
            # Members already running fix the domain: the rest must join them.
            domains = {
                (entries[r.node].state.labels.get(key) if r.node in entries else None)
                for r in bound
            }
            nodes = [n for n in nodes if n.labels.get(key) in domains]
        members = [GangMember(d.uid, d.name, d) for d in sorted(unbound, key=lambda d: d.name)]
        absent = self._absent_members(demand, gang_id, unbound, bound, gang.size - total)
        blocked: set[str] = set()
        for other, (other_key, values) in list(self._subdomains.items()):
            if self.book.plan(other) is None:
                del self._subdomains[other]
            elif other != gang_id and other_key == sub_key:
                blocked |= values
        result = plan_gang(
            members + absent,
            nodes,
            topology_key=key,
            config=self.scoring,
            subgroup_key=sub_key,
            pinned=pinned,
            blocked=blocked,
        )
        if isinstance(result, GangFailure):
            return result.reason
        if sub_key is not None:
            by_name = {n.name: n for n in nodes}
            self._subdomains[gang_id] = (
                sub_key,
                frozenset(
                    by_name[p.node].labels[sub_key]
                    for p in result.placements
                    if p.node in by_name and sub_key in by_name[p.node].labels
                ),
            )
        moment = self.clock()
        expires = moment + dt.timedelta(seconds=self.ttl_s)
        absent_expires = moment + dt.timedelta(seconds=self.absent_ttl_s)
        stand_ins = {m.uid: m.demand for m in absent}
        present = {d.uid: d for d in unbound}
        reserved: list[Reserved] = []
        for p in result.placements:
            stand_in = stand_ins.get(p.uid)
            if stand_in is None:
                reserved.append(
                    Reserved(
                        p.uid,
                        gang.namespace,
                        p.name,
                        len(p.gpus),
                        GpuReservation(gang_id, p.node, p.gpus, expires),
                        index=present[p.uid].gang_index,
                    )
                )
                continue
            reserved.append(
                Reserved(
                    p.uid,
                    gang.namespace,
                    p.name,
                    len(p.gpus),
                    GpuReservation(gang_id, p.node, p.gpus, absent_expires),
                    absent=True,
                    index=stand_in.gang_index,
                    demand_key=stand_in.key,
                )
            )
        self.book.record(gang_id, reserved)
        for node in {r.reservation.node for r in reserved}:
            self.cache.rebuild(node)
        log.info("gang %s planned: %s", gang.key, result.describe())
        effects += [_write(r) for r in reserved if not r.absent]
        return None
