"""Pod demand parsing: the DESIGN.md annotation contract, defaults, and every rejection path."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from support.k8s import model_annotations, pod

from scheduler.core.bounds import ECHO_CHARS, echo
from scheduler.core.demand import gpu_request, parse_demand
from scheduler.core.quantity import QuantityRangeError, parse_quantity, parse_whole_quantity
from scheduler.models.catalog import Catalog

LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.builtin()


def test_gpu_count_is_sum_of_containers_or_largest_init(catalog: Catalog) -> None:
    p = pod("p", gpus=2)
    p["spec"]["containers"].append(
        {"name": "side", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
    )
    p["spec"]["initContainers"] = [
        {"name": "warm", "resources": {"requests": {"nvidia.com/gpu": "4"}}}
    ]
    assert gpu_request(p) == 4
    p["spec"]["initContainers"][0]["resources"]["requests"]["nvidia.com/gpu"] = "1"
    assert gpu_request(p) == 3


def test_model_pod_plans_weights_and_kv(catalog: Catalog) -> None:
    demand = parse_demand(
        pod(
            "p",
            gpus=4,
            annotations=model_annotations(LLAMA_70B, max_model_len="8192", max_num_seqs="4"),
        ),
        catalog,
    )
    assert demand.error is None
    assert demand.gpus == 4
    assert demand.model == LLAMA_70B.lower()
    assert demand.plan is not None
    assert demand.plan.kv_tokens == 8192 * 4
    # 327,680 B/token for the whole model, split over 4 GPUs (8 KV heads -> 2 per GPU).
    assert demand.plan.kv_bytes_per_token_per_gpu == 327_680 // 4
    assert demand.gpu_memory_utilization == pytest.approx(0.9)


def test_defaults_one_sequence_at_catalog_length(catalog: Catalog) -> None:
    demand = parse_demand(pod("p", annotations=model_annotations(LLAMA_8B)), catalog)
    spec = catalog.get(LLAMA_8B)
    assert spec is not None and demand.plan is not None
    assert demand.plan.kv_tokens == spec.max_model_len


def test_kv_cache_tokens_instead_of_len_and_seqs(catalog: Catalog) -> None:
    demand = parse_demand(
        pod("p", annotations=model_annotations(LLAMA_8B, kv_cache_tokens="50000")), catalog
    )
    assert demand.plan is not None and demand.plan.kv_tokens == 50_000


def test_alias_and_case_resolve_to_canonical_model(catalog: Catalog) -> None:
    demand = parse_demand(pod("p", annotations=model_annotations(LLAMA_8B.upper())), catalog)
    assert demand.error is None
    assert demand.model == LLAMA_8B.lower()


def test_pod_without_model_is_gpu_count_only(catalog: Catalog) -> None:
    demand = parse_demand(pod("p", gpus=2), catalog)
    assert demand.error is None and demand.model is None and demand.plan is None


def test_unknown_model_with_weights_bytes_plans_weights_only(catalog: Catalog) -> None:
    demand = parse_demand(
        pod("p", gpus=2, annotations=model_annotations("acme/x", weights_bytes="26Gi")), catalog
    )
    assert demand.error is None and demand.plan is not None
    assert demand.plan.weights_bytes_total == 26 * 2**30
    assert demand.plan.kv_known is False


@pytest.mark.parametrize(
    ("annotations", "must_mention"),
    [
        (
            model_annotations("acme/secret-13b"),
            ["unknown model", "acme/secret-13b", "kvsched.io/weights-bytes"],
        ),
        (model_annotations(LLAMA_8B, max_num_seqs="lots"), ["kvsched.io/max-num-seqs", "lots"]),
        (model_annotations(LLAMA_8B, max_num_seqs="0"), ["kvsched.io/max-num-seqs", "'0'"]),
        (model_annotations(LLAMA_8B, max_model_len="-5"), ["kvsched.io/max-model-len", "-5"]),
        (
            model_annotations(LLAMA_8B, max_model_len="10000000"),
            ["kvsched.io/max-model-len", "10000000", "context"],
        ),
        (model_annotations(LLAMA_8B, dtype="bf17"), ["kvsched.io/dtype", "bf17"]),
        (model_annotations(LLAMA_8B, kv_cache_dtype="fp9"), ["kvsched.io/kv-cache-dtype", "fp9"]),
        (
            model_annotations(LLAMA_8B, gpu_memory_utilization="1.5"),
            ["kvsched.io/gpu-memory-utilization", "1.5"],
        ),
        (
            model_annotations(LLAMA_8B, gpu_memory_utilization="nan"),
            ["kvsched.io/gpu-memory-utilization", "nan"],
        ),
        (model_annotations(LLAMA_8B, weights_bytes="big"), ["kvsched.io/weights-bytes", "big"]),
        (
            model_annotations(LLAMA_8B, kv_cache_tokens="1000", max_num_seqs="4"),
            ["kvsched.io/kv-cache-tokens", "kvsched.io/max-num-seqs", "contradict"],
        ),
        (
            model_annotations(LLAMA_8B, kv_cache_tokens="1000", max_model_len="4096"),
            ["kvsched.io/kv-cache-tokens", "kvsched.io/max-model-len"],
        ),
        (model_annotations(LLAMA_8B, role="router"), ["kvsched.io/role", "router"]),
        (model_annotations(LLAMA_8B, gang_size="4"), ["kvsched.io/gang-size", "kvsched.io/gang"]),
        (model_annotations(LLAMA_8B, gang="g", gang_size="two"), ["kvsched.io/gang-size", "two"]),
        ({"kvsched.io/model": ""}, ["kvsched.io/model"]),
        ({"kvsched.io/modle": LLAMA_8B}, ["unknown annotation", "kvsched.io/modle"]),
        ({"kvsched.io/max-model-len": "4096"}, ["kvsched.io/max-model-len", "kvsched.io/model"]),
    ],
)
def test_bad_annotations_name_the_annotation_and_value(
    catalog: Catalog, annotations: dict[str, str], must_mention: list[str]
) -> None:
    demand = parse_demand(pod("p", gpus=1, annotations=annotations), catalog)
    assert demand.error is not None
    for text in must_mention:
        assert text in demand.error, (text, demand.error)


def test_model_without_gpu_request_is_an_error(catalog: Catalog) -> None:
    demand = parse_demand(pod("p", gpus=0, annotations=model_annotations(LLAMA_8B)), catalog)
    assert demand.error is not None and "nvidia.com/gpu" in demand.error


def test_malformed_gpu_quantity_is_an_error(catalog: Catalog) -> None:
    p = pod("p", gpus=1)
    p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "1.5"
    p["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] = "1.5"
    demand = parse_demand(p, catalog)
    assert demand.error is not None and "'1.5'" in demand.error


def test_non_string_annotation_is_an_error(catalog: Catalog) -> None:
    p = pod("p")
    p["metadata"]["annotations"]["kvsched.io/max-num-seqs"] = 4
    demand = parse_demand(p, catalog)
    assert demand.error is not None and "kvsched.io/max-num-seqs" in demand.error


def test_gang_identity_sources(catalog: Catalog) -> None:
    explicit = parse_demand(
        pod("p", annotations={"kvsched.io/gang": "g1", "kvsched.io/gang-size": "4"}), catalog
    )
    assert explicit.gang is not None and (explicit.gang.name, explicit.gang.size) == ("g1", 4)
    lws = parse_demand(
        pod(
            "p",
            labels={"leaderworkerset.sigs.k8s.io/group-key": "abc"},
            annotations={"leaderworkerset.sigs.k8s.io/size": "2"},
        ),
        catalog,
    )
    assert lws.gang is not None and lws.gang.size == 2 and lws.gang.source == "leaderworkerset"
    group = parse_demand(pod("p", labels={"scheduling.x-k8s.io/pod-group": "pg"}), catalog)
    assert group.gang is not None and group.gang.name == "pg"


def test_equal_pods_share_a_key_and_different_ones_do_not(catalog: Catalog) -> None:
    a = parse_demand(pod("a", annotations=model_annotations(LLAMA_8B)), catalog)
    b = parse_demand(pod("b", annotations=model_annotations(LLAMA_8B)), catalog)
    c = parse_demand(pod("c", annotations=model_annotations(LLAMA_8B, max_num_seqs="8")), catalog)
    assert a.key == b.key
    assert a.key != c.key


# Bounded parsing (DESIGN.md, "Hostile input"): numbers within int64 and a digit limit,
# decided before any big-number work; every quoted value cut short.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2", Decimal(2)),
        (" 4 ", Decimal(4)),
        ("64Gi", Decimal(64 * 2**30)),
        ("1.5e9", Decimal("1.5e9")),
        ("500m", Decimal("0.5")),
        ("1E", Decimal(10**18)),
        ("+1e+18", Decimal(10**18)),
        ("7Ei", Decimal(7 * 2**60)),
        ("9223372036854775807", Decimal(2**63 - 1)),
        (8, Decimal(8)),
        (0.5, Decimal("0.5")),
    ],
)
def test_quantities_within_int64_parse_exactly(text: str | int | float, expected: Decimal) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "1e999999",
        "1e-999999",
        "9" * 310,
        "9223372036854775808",
        "8Ei",
        "1e19",
        "1" + "0" * 39 + "e" + "0" * 5000,
        10**30,
        1e300,
        float("inf"),
    ],
)
def test_quantities_beyond_int64_are_out_of_range_at_once(text: str | int | float) -> None:
    started = time.perf_counter()
    with pytest.raises(QuantityRangeError):
        parse_whole_quantity(text)
    assert time.perf_counter() - started < 0.05


@pytest.mark.parametrize("value", [None, [1], {"a": 1}, True, "lots", ".", "1.5.5", "x" * 2**18])
def test_non_quantities_are_refused_with_a_short_message(value: object) -> None:
    with pytest.raises(ValueError, match="not a quantity") as caught:
        parse_quantity(value)
    assert len(str(caught.value)) < 100


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        ("max_num_seqs", "9" * 310),
        ("max_num_seqs", "1" + "0" * 18),
        ("max_model_len", "9" * 19),
        ("kv_cache_tokens", "1" * 100_000),
    ],
)
def test_integers_beyond_18_digits_are_out_of_range(
    catalog: Catalog, annotation: str, value: str
) -> None:
    demand = parse_demand(
        pod("p", annotations=model_annotations(LLAMA_8B, **{annotation: value})), catalog
    )
    assert demand.error is not None and "out of range" in demand.error
    assert len(demand.error) < 200


def test_eighteen_digit_integers_are_accepted(catalog: Catalog) -> None:
    demand = parse_demand(
        pod(
            "p",
            annotations=model_annotations("acme/x", weights_bytes="16Gi", max_num_seqs="9" * 18),
        ),
        catalog,
    )
    assert demand.error is None


@pytest.mark.parametrize(
    ("value", "shown"), [(None, "null"), ([1], "a list"), ({"a": 1}, "an object"), (True, "true")]
)
def test_gpu_requests_of_the_wrong_type_name_the_field(
    catalog: Catalog, value: object, shown: str
) -> None:
    p = pod("p", gpus=1)
    p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = value
    demand = parse_demand(p, catalog)
    assert demand.error == (
        f"container 'vllm': resources.limits.nvidia.com/gpu is {shown}, not a whole number of GPUs"
    )


@pytest.mark.parametrize(
    "annotations",
    [
        {"kvsched.io/model": "m" * 2**18},
        {"kvsched.io/gang": "g" * 400},
        {"kvsched.io/topology-key": "t" * 400},
        {"kvsched.io/kv-peer": "p" * 400},
        model_annotations(LLAMA_8B, model_revision="r" * 400),
        model_annotations(LLAMA_8B, dtype="d" * 2**18),
        model_annotations(LLAMA_8B, gpu_memory_utilization="0." + "9" * 2**18),
        model_annotations(LLAMA_8B, weights_bytes="9" * 2**18),
        {"kvsched.io/role": "r" * 2**18},
        {"kvsched.io/" + "k" * 2**10: "v" * 2**18},
    ],
)
def test_long_values_are_quoted_short(catalog: Catalog, annotations: dict[str, str]) -> None:
    demand = parse_demand(pod("p", annotations=annotations), catalog)
    assert demand.error is not None
    assert len(demand.error) < 320, demand.error
    assert "…" in demand.error


def test_long_label_names_a_gang_is_refused(catalog: Catalog) -> None:
    p = pod("p", labels={"scheduling.x-k8s.io/pod-group": "g" * 1000})
    demand = parse_demand(p, catalog)
    assert demand.error is not None and "scheduling.x-k8s.io/pod-group" in demand.error


def test_non_string_metadata_is_quoted_short(catalog: Catalog) -> None:
    p = pod("p")
    p["metadata"]["namespace"] = ["x"] * 10_000
    p["metadata"]["annotations"]["kvsched.io/model"] = {"a": [1] * 10_000}
    demand = parse_demand(p, catalog)
    assert demand.namespace == "a list"
    assert demand.error == "metadata.annotations['kvsched.io/model'] is an object, not a string"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("abc", "'abc'"),
        ("a" * 100, "'" + "a" * 64 + "…"),
        ("\x00" * 100, repr("\x00" * 100)[:65] + "…"),
        (10**100, "an integer of about 101 digits"),
        (-5, "-5"),
        (None, "null"),
        (False, "false"),
        ((1, 2), "a list"),
    ],
)
def test_echo_quotes_at_most_64_characters(value: object, shown: str) -> None:
    assert echo(value) == shown
    assert len(echo(value)) <= ECHO_CHARS + 2
