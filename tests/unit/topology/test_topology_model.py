"""Link codes, NodeTopology validation, hashing and conversions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from topology.model import GpuInfo, Link, LinkKind, NicInfo, NodeTopology, TopologyError

CODES = ["NV1", "NV4", "NV12", "NV18", "PIX", "PXB", "PHB", "NODE", "SYS"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("NV12", Link(LinkKind.NVLINK, 12)),
        ("nv1", Link(LinkKind.NVLINK, 1)),
        ("NV18", Link(LinkKind.NVLINK, 18)),
        (" X ", Link(LinkKind.SELF)),
        ("x", Link(LinkKind.SELF)),
        ("pix", Link(LinkKind.PIX)),
        ("PXB", Link(LinkKind.PXB)),
        ("PHB", Link(LinkKind.PHB)),
        ("Node", Link(LinkKind.NODE)),
        ("SYS", Link(LinkKind.SYS)),
        ("SOC", Link(LinkKind.SYS)),
    ],
)
def test_link_parse_accepts_every_code_nvidia_smi_prints(text: str, expected: Link) -> None:
    assert Link.parse(text) == expected


@pytest.mark.parametrize("text", ["", "NV", "NV0", "NVX", "PCI", "XX", "NV-2", "SYS2"])
def test_link_parse_rejects_unknown_codes(text: str) -> None:
    with pytest.raises(TopologyError, match=r"unknown link code|at least 1 link"):
        Link.parse(text)


def test_topology_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Link.parse("bogus")


@pytest.mark.parametrize("code", [*CODES, "X"])
def test_link_code_round_trips(code: str) -> None:
    assert Link.parse(code).code == code


def test_link_rank_orders_nvlink_count_then_pcie_distance() -> None:
    ordered = [Link.parse(code) for code in ["NV18", "NV12", "NV4", "NV1", "PIX", "PXB", "PHB"]]
    ordered += [Link.parse("NODE"), Link.parse("SYS")]
    ranks = [link.rank for link in ordered]
    assert ranks == sorted(ranks, reverse=True)
    assert len(set(ranks)) == len(ranks)
    assert Link.parse("X").rank > Link.parse("NV18").rank


def test_link_flags_and_invariants() -> None:
    assert Link.parse("NV2").is_nvlink
    assert not Link.parse("PIX").is_nvlink
    with pytest.raises(TopologyError):
        Link(LinkKind.NVLINK, 0)
    with pytest.raises(TopologyError):
        Link(LinkKind.PIX, 2)


def _pair_box() -> list[list[str]]:
    return [
        ["X", "NV12", "SYS", "SYS"],
        ["NV12", "X", "SYS", "SYS"],
        ["SYS", "SYS", "X", "NV12"],
        ["SYS", "SYS", "NV12", "X"],
    ]


def test_from_codes_builds_gpus_links_and_numa() -> None:
    topo = NodeTopology.from_codes(_pair_box(), numa_nodes=[0, 0, 1, 1])
    assert topo.gpu_count == 4
    assert topo.link(0, 1) == Link(LinkKind.NVLINK, 12)
    assert topo.link(1, 2).kind is LinkKind.SYS
    assert topo.link(3, 3).kind is LinkKind.SELF
    assert [topo.numa_of(i) for i in range(4)] == [0, 0, 1, 1]
    assert topo.codes() == _pair_box()
    assert not topo.is_nvswitch


def test_from_codes_merges_gpu_facts_and_numa_override() -> None:
    gpus = [GpuInfo(i, numa_node=9, uuid=f"GPU-{i}", product="A100-PCIe-80GB") for i in range(4)]
    topo = NodeTopology.from_codes(_pair_box(), numa_nodes=[0, 0, 1, 1], gpus=gpus)
    assert topo.gpus[2].uuid == "GPU-2"
    assert topo.gpus[2].numa_node == 1
    assert topo.gpus[2].product == "A100-PCIe-80GB"


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        ([["X", "NV12"], ["NV12"]], "row 1 has 1 entries"),
        ([["X", "NV12"], ["NV4", "X"]], "not symmetric"),
        ([["NV2", "NV2"], ["NV2", "X"]], "on the diagonal"),
        ([["X", "X"], ["X", "X"]], "off the diagonal"),
        ([["X", "FOO"], ["FOO", "X"]], "unknown link code 'FOO'"),
    ],
)
def test_invalid_matrices_raise_topology_error(codes: list[list[str]], message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        NodeTopology.from_codes(codes)


def test_gpu_order_and_nic_width_are_checked() -> None:
    links = NodeTopology.from_codes([["X", "PIX"], ["PIX", "X"]]).links
    with pytest.raises(TopologyError, match="index order"):
        NodeTopology((GpuInfo(1), GpuInfo(0)), links)
    with pytest.raises(TopologyError, match="NIC mlx5_0"):
        NodeTopology((GpuInfo(0), GpuInfo(1)), links, (NicInfo("mlx5_0", (Link.parse("PIX"),)),))
    with pytest.raises(TopologyError, match="2 NUMA nodes given"):
        NodeTopology.from_codes([["X"]], numa_nodes=[0, 1])


def test_empty_topology_is_allowed() -> None:
    topo = NodeTopology.from_codes([])
    assert topo.gpu_count == 0
    assert topo.codes() == []


def test_equal_topologies_hash_equal_and_collapse_as_keys() -> None:
    first = NodeTopology.from_codes(_pair_box(), numa_nodes=[0, 0, 1, 1])
    second = NodeTopology.from_codes([list(row) for row in _pair_box()], numa_nodes=[0, 0, 1, 1])
    assert first is not second
    assert first == second
    assert hash(first) == hash(second)
    assert len({first: 1, second: 2}) == 1
    other = NodeTopology.from_codes(_pair_box(), numa_nodes=[0, 1, 0, 1])
    assert other != first
    assert first != "not a topology"


def test_hash_is_computed_once() -> None:
    topo = NodeTopology.from_codes(_pair_box())
    cached = topo._hash
    # The cached value is what hash() returns; no recomputation walks the matrix.
    assert hash(topo) == cached
    object.__setattr__(topo, "_hash", 12345)
    try:
        assert hash(topo) == 12345
    finally:
        object.__setattr__(topo, "_hash", cached)


def test_layout_ignores_identity_but_keeps_links_and_numa() -> None:
    plain = NodeTopology.from_codes(_pair_box(), numa_nodes=[0, 0, 1, 1])
    named = NodeTopology.from_codes(
        _pair_box(),
        gpus=[GpuInfo(i, numa_node=i // 2, uuid=f"GPU-{i}") for i in range(4)],
    )
    assert plain != named
    assert plain.layout == named.layout
    assert hash(plain.layout) == hash(named.layout)
    assert plain.layout is plain  # already bare
    assert named.layout is named.layout


def test_is_nvswitch_needs_equal_nvlink_everywhere() -> None:
    full = [["X" if a == b else "NV18" for b in range(4)] for a in range(4)]
    assert NodeTopology.from_codes(full).is_nvswitch
    full[0][1] = full[1][0] = "NV12"
    assert not NodeTopology.from_codes(full).is_nvswitch
    assert not NodeTopology.from_codes([["X"]]).is_nvswitch


def test_graph_has_gpu_nodes_and_link_edges() -> None:
    topo = NodeTopology.from_codes(
        _pair_box(), gpus=[GpuInfo(i, numa_node=i // 2, uuid=f"GPU-{i}") for i in range(4)]
    )
    graph = topo.graph()
    assert sorted(graph.nodes) == [0, 1, 2, 3]
    assert graph.number_of_edges() == 6
    assert graph.nodes[2]["numa"] == 1
    assert graph.nodes[2]["uuid"] == "GPU-2"
    edge = graph.edges[0, 1]
    assert edge["kind"] is LinkKind.NVLINK
    assert edge["code"] == "NV12"
    assert edge["nvlinks"] == 12
    assert edge["rank"] == Link.parse("NV12").rank
    assert graph.edges[1, 2]["code"] == "SYS"


def test_link_and_numa_of_check_indices() -> None:
    topo = NodeTopology.from_codes(_pair_box())
    with pytest.raises(IndexError):
        topo.link(0, 4)
    with pytest.raises(IndexError):
        topo.numa_of(-1)


@st.composite
def code_matrices(draw: st.DrawFn) -> list[list[str]]:
    count = draw(st.integers(min_value=1, max_value=8))
    codes = [["X"] * count for _ in range(count)]
    for a in range(count):
        for b in range(a + 1, count):
            codes[a][b] = codes[b][a] = draw(st.sampled_from(CODES))
    return codes


@given(code_matrices())
def test_codes_round_trip_through_from_codes(codes: list[list[str]]) -> None:
    topo = NodeTopology.from_codes(codes)
    assert topo.codes() == codes
    again = NodeTopology.from_codes(topo.codes())
    assert again == topo
    assert hash(again) == hash(topo)


def test_asdict_and_replace_work_after_layout_is_used() -> None:
    import dataclasses

    named = NodeTopology.from_codes(_pair_box(), gpus=[GpuInfo(i, uuid=f"U{i}") for i in range(4)])
    _ = named.layout, named.layout.layout
    as_dict = dataclasses.asdict(named)
    assert as_dict["gpus"][1]["uuid"] == "U1"
    again = dataclasses.replace(named, nics=())
    assert again == named and hash(again) == hash(named)
