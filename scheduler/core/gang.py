"""Gang planning: place an all-or-nothing group of pods at once, inside one topology domain.

kube-scheduler gives an extender no reserve or permit hook, so kvsched plans a whole group
(a tensor-/pipeline-parallel model split over several pods) when its first member reaches
filter, and the store holds the plan for the other members. This module is the pure part:
members and node states in, a :class:`GangPlan` or one :class:`GangFailure` out.

Rules of :func:`plan_gang`:

1. A member whose demand carries an error fails the whole group with that error.
2. Nodes are grouped into *domains* by the value of the group's topology key (see
   :func:`topology_key_for`). With a key, nodes that lack the label belong to no domain;
   without one the whole cluster is a single domain.
3. In each domain the members are placed one by one, most GPUs first (ties by name, then
   uid). Each member goes to the node that is best for it given what the earlier members of
   this plan already took there (the chosen GPUs leave ``free_gpus`` and the node is
   evaluated again with :func:`~scheduler.core.placement.evaluate`, which chooses the GPU set
   exactly as for a single pod). Best means, in this order: the member fits; the node is one
   the group already uses (same node is the tightest); the node is in the same NVLink domain
   (``nvidia.com/gpu.clique``) as a member already placed; lower time to ready; higher GPU-set
   quality; node name. A domain's plan is feasible only if every member fits.
4. Among feasible domains the plan that wins is the smallest, compared in order, of:
   the slowest member's time to ready (no model: 0 s), the number of nodes used, minus the
   sum of the members' GPU-set qualities, the domain's label value. The group is ready when
   its slowest member is, so that comes first; then tightness; then link quality.
5. LWS exclusive subgroups (``subgroup_key``): in each domain the subgroups are placed one by
   one (pinned ones first, then most GPUs), each within one value of ``subgroup_key`` that no
   other subgroup of the plan took and no other group holds (``blocked``), choosing the value
   by rule 4 and then best fit; members without a subgroup go last, anywhere in the domain.
   When ``subgroup_key`` is the topology key the whole cluster is the group's one domain.
6. The result is a function of the input values only: node and domain order in the input do
   not matter, and equal inputs give equal plans.

When no domain can hold the whole group the answer is one :class:`GangFailure` whose reason
names the group, its member count and GPU counts, the topology key and, for the domain that
came closest, how many members fit and why the first one that did not fit failed on its best
node. Every member fails filter with that reason (all or nothing).

Cost: one evaluation per (domain, member, node in the domain), i.e. members x nodes in all;
evaluations of nodes that are alike (same shape, same residency of the model) are shared
within one call.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from scheduler.core.demand import GangRef, PodDemand
from scheduler.core.node import CachedModel, NodeState
from scheduler.core.placement import DEFAULT_SCORING, NodeEvaluation, ScoringConfig, evaluate

DEFAULT_TOPOLOGY_KEYS = (
    "nvidia.com/gpu.clique",
    "network.topology.nvidia.com/accelerator",
    "topology.kubernetes.io/zone",
)
NVLINK_DOMAIN_LABEL = "nvidia.com/gpu.clique"

# kv_peer_term by distance (same node, same NVLink domain, same topology domain, elsewhere).
# Same node moves KV over local NVLink/PCIe; a multi-node NVLink domain (GB200 NVL72 and the
# like) is nearly as fast; within a rack or zone KV goes over RDMA at a fraction of that; past
# it the transfer crosses the spine and is what disaggregated serving tries to avoid.
_KV_PEER_TERMS = (1.0, 0.7, 0.4, 0.0)
KV_PEER_FAR = len(_KV_PEER_TERMS) - 1


@dataclass(frozen=True)
class GangMember:
    """One pod of the group: its uid and name (for the plan) and its parsed demand."""

    uid: str
    name: str
    demand: PodDemand


@dataclass(frozen=True)
class MemberPlacement:
    """Where one member goes: node, GPU indices, its time to ready and a one-line summary."""

    uid: str
    name: str
    node: str
    gpus: tuple[int, ...]
    ready_seconds: float | None
    summary: str


@dataclass(frozen=True)
class GangPlan:
    """A placement of every member of the group inside one topology domain.

    `domain` is the label value all used nodes share under `topology_key`; both are None when
    the cluster is one domain. `placements` follow the order of the members given to
    :func:`plan_gang`. `ready_seconds` is the slowest member's (None if no member names a
    model).
    """

    gang: GangRef
    topology_key: str | None
    domain: str | None
    placements: tuple[MemberPlacement, ...]
    ready_seconds: float | None
    nodes_used: int

    def placement_of(self, uid: str) -> MemberPlacement | None:
        for placement in self.placements:
            if placement.uid == uid:
                return placement
        return None

    def describe(self) -> str:
        """One line, e.g. ``gang llm/g (2 members) in zone=a: w0->n1[0-7], w1->n2[0-7]; ...``."""
        where = _domain_text(self.topology_key, self.domain)
        members = ", ".join(
            f"{p.name}->{p.node}" + (f"[{_ranges(p.gpus)}]" if p.gpus else "")
            for p in self.placements
        )
        nodes = f"{self.nodes_used} node" + ("" if self.nodes_used == 1 else "s")
        ready = "" if self.ready_seconds is None else f", ready~{self.ready_seconds:.0f}s"
        return (
            f"gang {_gang_text(self.gang)} ({len(self.placements)} members) in {where}: "
            f"{members}; {nodes}{ready}"
        )


@dataclass(frozen=True)
class GangFailure:
    """Why the group cannot be placed; every member fails filter with this reason."""

    reason: str


def topology_key_for(explicit: str | None, nodes: Sequence[NodeState]) -> str | None:
    """The label a group's nodes must share.

    The pod's `kvsched.io/topology-key` wins; otherwise the first of
    :data:`DEFAULT_TOPOLOGY_KEYS` that any candidate node carries; None when no node carries
    any of them (the whole cluster is then one domain).
    """
    if explicit is not None:
        return explicit
    for key in DEFAULT_TOPOLOGY_KEYS:
        if any(key in node.labels for node in nodes):
            return key
    return None


def kv_peer_distance(
    node: NodeState, peer_nodes: Sequence[NodeState], topology_key: str | None
) -> int:
    """How far `node` is from the nearest KV-transfer peer (a node running one).

    0: a peer runs on this node; 1: on a node of the same NVLink domain
    (:data:`NVLINK_DOMAIN_LABEL`); 2: on a node of the same topology domain (same value of
    `topology_key`; with no key the cluster is one domain, so any peer counts); 3: elsewhere,
    or there are no peers.
    """
    if not peer_nodes:
        return KV_PEER_FAR
    if any(peer.name == node.name for peer in peer_nodes):
        return 0
    clique = node.labels.get(NVLINK_DOMAIN_LABEL)
    if clique is not None and any(
        peer.labels.get(NVLINK_DOMAIN_LABEL) == clique for peer in peer_nodes
    ):
        return 1
    if topology_key is None:
        return 2
    domain = node.labels.get(topology_key)
    if domain is not None and any(peer.labels.get(topology_key) == domain for peer in peer_nodes):
        return 2
    return KV_PEER_FAR


def kv_peer_term(distance: int) -> float:
    """The KV-locality score term in [0, 1] for a :func:`kv_peer_distance`.

    1.0 on a peer's node, 0.7 in its NVLink domain, 0.4 in its rack/zone, 0.0 elsewhere:
    strictly decreasing with distance. Distances above 3 count as 3; negative ones raise
    ValueError.
    """
    if distance < 0:
        raise ValueError(f"kv peer distance must be >= 0, got {distance}")
    return _KV_PEER_TERMS[min(distance, KV_PEER_FAR)]


def plan_gang(
    members: Sequence[GangMember],
    nodes: Sequence[NodeState],
    *,
    topology_key: str | None,
    config: ScoringConfig = DEFAULT_SCORING,
    subgroup_key: str | None = None,
    pinned: Mapping[int, str] | None = None,
    blocked: Iterable[str] = (),
) -> GangPlan | GangFailure:
    """Place every member inside one domain of `topology_key`, or fail them all.

    See the module docstring for the rules. `members` are planned as given (the caller
    decides when the group is complete). With `subgroup_key` (LWS
    `subgroup-exclusive-topology`), the members that carry a subgroup index are placed each
    subgroup within one value of `subgroup_key`, no two subgroups on the same value, no
    subgroup on a value in `blocked` (held by another group's subgroups) and subgroup `i` on
    `pinned[i]` when given (its members already bound there). When `subgroup_key` equals
    `topology_key` the group as a whole is not kept to one domain (it could not be).
    """
    if not members:
        return GangFailure("gang has no members to plan")
    gang = _gang_of(members)
    seen: set[str] = set()
    for member in members:
        if member.uid in seen:
            return GangFailure(f"gang {_gang_text(gang)}: member uid {member.uid!r} appears twice")
        seen.add(member.uid)
    for member in members:
        if member.demand.error is not None:
            return GangFailure(
                f"gang {_gang_text(gang)}: member {member.name}: {member.demand.error}"
            )

    order = sorted(members, key=lambda m: (-m.demand.gpus, m.name, m.uid))
    split = subgroup_key is not None and any(m.demand.subgroup is not None for m in members)
    if split and topology_key == subgroup_key:
        topology_key = None
    domains = _domains(nodes, topology_key)
    scope = f"one {topology_key}" if topology_key is not None else "the cluster"
    needs = f"gang {_gang_text(gang)} needs {_members_text(members)} in {scope}"
    if not domains:
        if topology_key is None:
            return GangFailure(f"{needs}: there are no candidate nodes")
        return GangFailure(
            f"{needs}: no candidate node carries the label {topology_key} "
            f"({len(nodes)} node{'s' if len(nodes) != 1 else ''} checked)"
        )

    memo = _Memo(config)
    if split:
        assert subgroup_key is not None
        rule = _Subgroups(subgroup_key, dict(pinned or {}), frozenset(blocked))
        attempts = [
            _plan_subgroups(value, domain_nodes, order, memo, rule)
            for value, domain_nodes in domains
        ]
        needs += f", each subgroup in its own {subgroup_key}"
    else:
        attempts = [
            _plan_domain(value, domain_nodes, order, memo) for value, domain_nodes in domains
        ]
    feasible = [a for a in attempts if a.feasible]
    if feasible:
        best = min(feasible, key=_Attempt.rank)
        return _to_plan(best, gang, members, topology_key)
    closest = min(attempts, key=_Attempt.closeness)
    return GangFailure(f"{needs}: {_shortfall(closest, topology_key, len(domains))}")


# -- planning -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Placed:
    member: GangMember
    node: NodeState
    evaluation: NodeEvaluation


@dataclass(frozen=True)
class _Missed:
    member: GangMember
    node: NodeState | None  # None: no node could be tried (`note` says why)
    evaluation: NodeEvaluation | None
    taken: int  # GPUs of `node` that earlier members of this plan took
    note: str = ""


@dataclass
class _Attempt:
    """The greedy plan of one domain: who was placed where, who did not fit."""

    domain: str | None
    node_count: int
    placed: list[_Placed] = field(default_factory=list)
    missed: list[_Missed] = field(default_factory=list)

    @property
    def feasible(self) -> bool:
        return not self.missed

    @property
    def ready_seconds(self) -> float | None:
        times = [p.evaluation.ready_seconds for p in self.placed]
        known = [t for t in times if t is not None]
        return max(known) if known else None

    @property
    def nodes_used(self) -> int:
        return len({p.node.name for p in self.placed})

    def rank(self) -> tuple[float, int, float, str]:
        """Smaller is better (rule 4)."""
        quality = sum(_quality(p.evaluation) for p in self.placed)
        return (self.ready_seconds or 0.0, self.nodes_used, -quality, self.domain or "")

    def closeness(self) -> tuple[int, int, str]:
        """Smaller is closer to holding the group: more members placed, then more GPUs."""
        gpus = sum(len(p.evaluation.gpus) for p in self.placed)
        return (-len(self.placed), -gpus, self.domain or "")


class _Memo:
    """Evaluations within one plan_gang call, shared by nodes that are alike for a member.

    `evaluate` depends on the demand's key, the node's shape and, for the cold start, the
    residency of the demand's model on the node; nothing else.
    """

    def __init__(self, config: ScoringConfig) -> None:
        self._config = config
        self._cache: dict[tuple[object, ...], NodeEvaluation] = {}

    def evaluate(self, demand: PodDemand, node: NodeState) -> NodeEvaluation:
        residency: CachedModel | None = None
        if demand.model is not None:
            residency = node.residency(demand.model, demand.revision)
        key = (demand.key, node.shape, residency)
        found = self._cache.get(key)
        if found is None:
            found = evaluate(demand, node, self._config)
            self._cache[key] = found
        return found


def _domains(
    nodes: Iterable[NodeState], topology_key: str | None
) -> list[tuple[str | None, list[NodeState]]]:
    """Domains sorted by label value, each with its nodes sorted by name."""
    ordered = sorted(nodes, key=lambda n: n.name)
    if topology_key is None:
        return [(None, ordered)] if ordered else []
    groups: dict[str, list[NodeState]] = {}
    for node in ordered:
        value = node.labels.get(topology_key)
        if value is not None:
            groups.setdefault(value, []).append(node)
    return sorted(groups.items())


def _plan_domain(
    domain: str | None, nodes: list[NodeState], order: Sequence[GangMember], memo: _Memo
) -> _Attempt:
    attempt = _Attempt(domain, len(nodes))
    originals = {node.name: node for node in nodes}
    _greedy(attempt, order, originals, dict(originals), set(), set(), memo)
    return attempt


@dataclass(frozen=True)
class _Subgroups:
    key: str
    pinned: dict[int, str]
    blocked: frozenset[str]


def _plan_subgroups(
    domain: str | None,
    nodes: list[NodeState],
    order: Sequence[GangMember],
    memo: _Memo,
    rule: _Subgroups,
) -> _Attempt:
    """One group domain's plan when subgroups must each take a value of `rule.key` of their
    own: subgroups one by one (pinned ones first, then most GPUs), each on the free value
    where it places best (rank as rule 4, then the value with fewer free GPUs: best fit);
    members without a subgroup (LWS LeaderExcluded leader) last, anywhere in the domain."""
    attempt = _Attempt(domain, len(nodes))
    originals = {node.name: node for node in nodes}
    current = dict(originals)
    used: set[str] = set()
    cliques: set[str] = set()
    values: dict[str, list[str]] = {}
    for node in nodes:
        value = node.labels.get(rule.key)
        if value is not None:
            values.setdefault(value, []).append(node.name)
    subgroups: dict[int, list[GangMember]] = {}
    free: list[GangMember] = []
    for member in order:
        if member.demand.subgroup is None:
            free.append(member)
        else:
            subgroups.setdefault(member.demand.subgroup, []).append(member)
    taken: set[str] = set()
    sequence = sorted(
        subgroups,
        key=lambda i: (
            i not in rule.pinned,
            -sum(m.demand.gpus for m in subgroups[i]),
            -len(subgroups[i]),
            i,
        ),
    )
    for index in sequence:
        group = subgroups[index]
        if index in rule.pinned:
            choices = [rule.pinned[index]] if rule.pinned[index] in values else []
        else:
            choices = [
                v
                for v in sorted(values)
                if v not in taken and v not in rule.blocked and v not in rule.pinned.values()
            ]
        trials: list[tuple[str, _Attempt, dict[str, NodeState], set[str], set[str]]] = []
        for value in choices:
            trial = _Attempt(value, len(values[value]))
            sub = {name: current[name] for name in values[value]}
            trial_used, trial_cliques = set(used), set(cliques)
            _greedy(trial, group, originals, sub, trial_used, trial_cliques, memo)
            trials.append((value, trial, sub, trial_used, trial_cliques))
        fits = [t for t in trials if t[1].feasible]
        if not fits:
            if trials:
                closest = min(trials, key=lambda t: t[1].closeness())[1]
                attempt.placed += closest.placed
                attempt.missed += closest.missed
            else:
                note = (
                    f"no {rule.key} is left for subgroup {index} "
                    f"({len(values)} in this domain; {len(taken)} taken by other subgroups, "
                    f"{len(rule.blocked & values.keys())} held by other groups' subgroups)"
                )
                attempt.missed += [_Missed(m, None, None, 0, note) for m in group]
            continue

        def best_fit(
            t: tuple[str, _Attempt, dict[str, NodeState], set[str], set[str]],
        ) -> tuple[float, int, int, float, str]:
            ready, nodes_used, quality, _ = t[1].rank()
            room = sum(len(current[name].free_gpus) for name in values[t[0]])
            return (ready, nodes_used, room, quality, t[0])

        value, trial, sub, used, cliques = min(fits, key=best_fit)
        taken.add(value)
        attempt.placed += trial.placed
        current.update(sub)
    _greedy(attempt, free, originals, current, used, cliques, memo)
    return attempt


def _greedy(
    attempt: _Attempt,
    order: Sequence[GangMember],
    originals: Mapping[str, NodeState],
    current: dict[str, NodeState],
    used: set[str],
    cliques: set[str],
    memo: _Memo,
) -> None:
    """Place `order` one by one on `current` (updated in place), recording into `attempt`."""
    for member in order:
        candidates = [(node, memo.evaluate(member.demand, node)) for node in current.values()]
        node, result = min(candidates, key=lambda c: _node_rank(c[0], c[1], used, cliques))
        if not result.fits:
            closest, why = min(candidates, key=lambda c: _miss_rank(c[0], c[1]))
            taken = len(originals[closest.name].free_gpus - closest.free_gpus)
            attempt.missed.append(_Missed(member, closest, why, taken))
            continue
        attempt.placed.append(_Placed(member, node, result))
        used.add(node.name)
        clique = node.labels.get(NVLINK_DOMAIN_LABEL)
        if clique is not None:
            cliques.add(clique)
        if result.gpus:
            current[node.name] = replace(node, free_gpus=node.free_gpus - set(result.gpus))


def _node_rank(
    node: NodeState, result: NodeEvaluation, used: set[str], cliques: set[str]
) -> tuple[bool, bool, bool, float, float, str]:
    """Smaller is better (rule 3)."""
    clique = node.labels.get(NVLINK_DOMAIN_LABEL)
    return (
        not result.fits,
        node.name not in used,
        clique is None or clique not in cliques,
        result.ready_seconds or 0.0,
        -_quality(result),
        node.name,
    )


def _miss_rank(node: NodeState, result: NodeEvaluation) -> tuple[bool, int, str]:
    """The node that came closest for a member that fits nowhere in the domain: one that
    preemption could cure first, then the one with most free GPUs."""
    return (result.unresolvable, -len(node.usable_free_gpus), node.name)


def _quality(result: NodeEvaluation) -> float:
    return result.gpu_set.quality if result.gpu_set is not None else 1.0


def _to_plan(
    attempt: _Attempt, gang: GangRef, members: Sequence[GangMember], topology_key: str | None
) -> GangPlan:
    by_uid = {p.member.uid: p for p in attempt.placed}
    placements = tuple(
        MemberPlacement(
            uid=member.uid,
            name=member.name,
            node=by_uid[member.uid].node.name,
            gpus=by_uid[member.uid].evaluation.gpus,
            ready_seconds=by_uid[member.uid].evaluation.ready_seconds,
            summary=by_uid[member.uid].evaluation.summary(),
        )
        for member in members
    )
    return GangPlan(
        gang=gang,
        topology_key=topology_key,
        domain=attempt.domain,
        placements=placements,
        ready_seconds=attempt.ready_seconds,
        nodes_used=attempt.nodes_used,
    )


# -- text -----------------------------------------------------------------------------------


def _gang_of(members: Sequence[GangMember]) -> GangRef:
    for member in members:
        if member.demand.gang is not None:
            return member.demand.gang
    first = members[0]
    return GangRef(first.demand.namespace, first.name, len(members), "implicit")


def _gang_text(gang: GangRef) -> str:
    return f"{gang.namespace}/{gang.name}"


def _members_text(members: Sequence[GangMember]) -> str:
    """`4 members x 8 GPUs`, or `3 members (2x8 + 1x1 GPUs)` when the counts differ."""
    counts = Counter(m.demand.gpus for m in members)
    noun = "member" if len(members) == 1 else "members"
    if len(counts) == 1:
        gpus = next(iter(counts))
        return f"{len(members)} {noun} x {gpus} GPU{'' if gpus == 1 else 's'}"
    parts = " + ".join(f"{n}x{gpus}" for gpus, n in sorted(counts.items(), reverse=True))
    return f"{len(members)} {noun} ({parts} GPUs)"


def _domain_text(topology_key: str | None, domain: str | None) -> str:
    if topology_key is None or domain is None:
        return "cluster"
    return f"{topology_key.rsplit('/', 1)[-1]}={domain}"


def _shortfall(attempt: _Attempt, topology_key: str | None, domains: int) -> str:
    total = len(attempt.placed) + len(attempt.missed)
    first = attempt.missed[0]
    where = _domain_text(topology_key, attempt.domain)
    gpus = first.member.demand.gpus
    earlier = f", {first.taken} GPUs given to earlier members" if first.taken else ""
    if first.node is None or first.evaluation is None:
        missing = f"member {first.member.name} ({gpus} GPU{'' if gpus == 1 else 's'}): {first.note}"
    else:
        missing = (
            f"member {first.member.name} ({gpus} GPU{'' if gpus == 1 else 's'}) fits no node "
            f"(best node {first.node.name}{earlier}: {first.evaluation.reason})"
        )
    if topology_key is None:
        return f"the cluster holds {len(attempt.placed)} of {total}; {missing}"
    return (
        f"best of {domains} domain{'' if domains == 1 else 's'} {where} "
        f"({attempt.node_count} node{'' if attempt.node_count == 1 else 's'}) holds "
        f"{len(attempt.placed)} of {total}; {missing}"
    )


def _ranges(gpus: Iterable[int]) -> str:
    """`0-3,6` for (0, 1, 2, 3, 6)."""
    ordered = sorted(gpus)
    parts: list[str] = []
    start = prev = ordered[0]
    for index in ordered[1:]:
        if index == prev + 1:
            prev = index
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = index
    parts.append(str(start) if start == prev else f"{start}-{prev}")
    return ",".join(parts)


__all__ = [
    "DEFAULT_TOPOLOGY_KEYS",
    "NVLINK_DOMAIN_LABEL",
    "GangFailure",
    "GangMember",
    "GangPlan",
    "MemberPlacement",
    "kv_peer_distance",
    "kv_peer_term",
    "plan_gang",
    "topology_key_for",
]
