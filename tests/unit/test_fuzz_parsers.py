"""Bad input, generated: the parsers either accept or reject with their own error and a
message; they never raise anything else and never hang.

Case counts are fixed (settings below) so that the number of cases run is known:
demand 600, topology 400, catalog 400, wire 400, prediction 300; hostile sizes and nesting:
quantities 400, JSON depth 400, deep annotations and bodies 100.
"""

from __future__ import annotations

import json
import string
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.core.assignment import GpuPrediction, GpuReservation
from scheduler.core.bounds import json_depth_exceeds
from scheduler.core.demand import KNOWN_ANNOTATIONS, parse_demand
from scheduler.core.quantity import INT64_MAX, parse_quantity
from scheduler.extender.wire import (
    MAX_BODY_DEPTH,
    WireError,
    decode_json,
    parse_binding_args,
    parse_extender_args,
)
from scheduler.models.catalog import Catalog, spec_from_hf_config
from topology.model import TopologyError
from topology.parse import parse_nvidia_smi_topo

CATALOG = Catalog.builtin()


def fuzz(cases: int) -> settings:
    return settings(max_examples=cases, deadline=None, suppress_health_check=[HealthCheck.too_slow])


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
annotation_values = st.sampled_from(
    [
        "",
        "0",
        "-1",
        "1",
        "8192",
        "1e9",
        "0.9",
        "1.5",
        "nan",
        "inf",
        "bf16",
        "fp8",
        "lots",
        "meta-llama/Llama-3.1-8B-Instruct",
        "acme/x",
        "132Gi",
        "prefill",
        "decode",
        " 4 ",
    ]
) | st.text(max_size=12)


@fuzz(600)
@given(
    st.dictionaries(
        st.sampled_from([*sorted(KNOWN_ANNOTATIONS), "kvsched.io/typo"]),
        annotation_values,
        max_size=6,
    ),
    st.integers(min_value=-2, max_value=16) | st.text(max_size=4),
)
def test_pod_demand_never_crashes_and_errors_name_an_annotation(
    annotations: dict[str, str], gpus: int | str
) -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u", "annotations": annotations},
        "spec": {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": gpus}}}]},
    }
    demand = parse_demand(pod, CATALOG)
    if demand.error is not None:
        assert demand.error.strip()
        assert (
            "kvsched.io/" in demand.error
            or "nvidia.com/gpu" in demand.error
            or ("unknown model" in demand.error)
            or "model " in demand.error
        )


@fuzz(200)
@given(json_values)
def test_pod_demand_survives_any_json_shape(pod: Any) -> None:
    if isinstance(pod, dict):
        parse_demand(pod, CATALOG)


topo_tokens = st.sampled_from(
    [
        "GPU0",
        "GPU1",
        "GPU2",
        "NIC0",
        "X",
        "NV12",
        "NV18",
        "PIX",
        "PXB",
        "PHB",
        "NODE",
        "SYS",
        "SOC",
        "0-63",
        "N/A",
        "0",
        "CPU Affinity",
        "NUMA Affinity",
        "Legend:",
        "\t",
        " ",
        "\n",
    ]
)


@fuzz(400)
@given(st.lists(topo_tokens, max_size=60).map("".join) | st.text(max_size=200))
def test_topology_parser_accepts_or_explains(text: str) -> None:
    try:
        topology = parse_nvidia_smi_topo(text)
    except TopologyError as exc:
        assert str(exc)
        return
    assert topology.gpu_count >= 1


hf_keys = st.sampled_from(
    [
        "num_hidden_layers",
        "hidden_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "intermediate_size",
        "torch_dtype",
        "kv_lora_rank",
        "qk_rope_head_dim",
        "max_position_embeddings",
        "num_local_experts",
        "quantization_config",
        "text_config",
        "model_type",
    ]
)


@fuzz(400)
@given(
    st.dictionaries(hf_keys, json_values | st.integers(min_value=-4, max_value=100000), max_size=10)
)
def test_hf_config_loader_accepts_or_explains(config: dict[str, Any]) -> None:
    try:
        spec = spec_from_hf_config("fuzz/model", config)
    except ValueError as exc:
        assert str(exc)
        return
    assert spec.num_layers > 0 and spec.params_total > 0


@fuzz(400)
@given(json_values)
def test_extender_envelopes_are_accepted_or_rejected_with_a_message(body: Any) -> None:
    for parse in (parse_extender_args, parse_binding_args):
        try:
            parse(body)
        except WireError as exc:
            assert str(exc)


@fuzz(300)
@given(st.text(alphabet=string.printable, max_size=80) | json_values.map(str))
def test_annotation_codecs_accept_or_explain(text: str) -> None:
    for codec in (GpuPrediction, GpuReservation):
        try:
            codec.decode(text)
        except ValueError as exc:
            assert str(exc)


# Hostile sizes and nesting (DESIGN.md, "Hostile input"): bounded work, a ValueError, never
# RecursionError or a big-number freeze.

quantity_texts = st.one_of(
    st.text(max_size=30),
    st.builds(
        lambda sign, digits, point, exponent, suffix: f"{sign}{digits}{point}{exponent}{suffix}",
        st.sampled_from(["", "+", "-"]),
        st.integers(1, 400).map(lambda n: "9" * n),
        st.sampled_from(["", ".", ".5", "." + "0" * 60 + "1"]),
        st.sampled_from(["", "e"]).flatmap(
            lambda e: st.just("") if not e else st.integers(-(10**9), 10**9).map(lambda x: f"e{x}")
        ),
        st.sampled_from(["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "E"]),
    ),
)


@fuzz(400)
@given(quantity_texts)
def test_quantities_parse_or_refuse_in_bounded_time(text: str) -> None:
    started = time.perf_counter()
    try:
        value = parse_quantity(text)
    except ValueError as exc:
        assert len(str(exc)) < 200
    else:
        assert abs(value) <= INT64_MAX
    assert time.perf_counter() - started < 0.05


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


tricky_strings = st.text(alphabet='[]{}"\\/ux0', max_size=12)
tricky_json = st.recursive(
    st.none() | st.integers() | tricky_strings,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(tricky_strings, inner, max_size=3),
    max_leaves=30,
)


@fuzz(400)
@given(tricky_json, st.integers(0, 8), st.booleans())
def test_json_depth_is_measured_exactly_on_the_text(value: Any, limit: int, compact: bool) -> None:
    text = json.dumps(value, separators=(",", ":") if compact else None, ensure_ascii=compact)
    assert json_depth_exceeds(text, limit) == (depth(value) > limit)
    assert json_depth_exceeds(text.encode(), limit) == (depth(value) > limit)


@fuzz(100)
@given(st.integers(0, 20_000), st.sampled_from(["[", '{"a":', '[{"b":']))
def test_deep_annotations_and_bodies_are_refused_without_recursion(n: int, opener: str) -> None:
    closer = {"[": "]", '{"a":': "}", '[{"b":': "}]"}[opener]
    text = opener * n + "1" + closer * n
    for codec in (GpuPrediction, GpuReservation):
        try:
            codec.decode(text)
        except ValueError as exc:
            assert str(exc)
    try:
        decode_json(text.encode())
    except WireError as exc:
        assert "deeper" in str(exc) or "malformed" in str(exc)
    else:
        assert n * opener.count("[") + n * opener.count("{") <= MAX_BODY_DEPTH
