"""The catalog: built-in data, look-ups, YAML / ConfigMap / path loading, merging."""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from scheduler.models.catalog import Catalog
from scheduler.models.kvplan import kv_bytes_per_token, weights_bytes
from scheduler.models.spec import ModelSpec

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hf"

REQUIRED_MODELS = (
    "meta-llama/Llama-3.1-8B-Instruct",
    "meta-llama/Llama-3.1-70B-Instruct",
    "meta-llama/Llama-3.1-405B-Instruct",
    "meta-llama/Llama-3.3-70B-Instruct",
    "meta-llama/Llama-3.2-1B-Instruct",
    "meta-llama/Llama-3.2-3B-Instruct",
    "Qwen/Qwen2.5-7B-Instruct",
    "Qwen/Qwen2.5-32B-Instruct",
    "Qwen/Qwen2.5-72B-Instruct",
    "Qwen/Qwen3-8B",
    "Qwen/Qwen3-32B",
    "mistralai/Mistral-7B-Instruct-v0.3",
    "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "mistralai/Mixtral-8x22B-Instruct-v0.1",
    "deepseek-ai/DeepSeek-V3",
    "openai/gpt-oss-20b",
    "openai/gpt-oss-120b",
    "google/gemma-2-9b-it",
    "google/gemma-3-27b-it",
)

SMALL_YAML = """
- name: example/tiny-7b
  aliases: [tiny]
  params_total: 7B
  num_layers: 32
  hidden_size: 4096
  num_attention_heads: 32
  num_kv_heads: 8
  max_model_len: 8192
"""


# ---------------------------------------------------------------------- built-in


def test_builtin_has_the_popular_models() -> None:
    catalog = Catalog.builtin()
    assert len(catalog) >= 16
    for name in REQUIRED_MODELS:
        assert name in catalog.names(), name


def test_builtin_is_cached() -> None:
    assert Catalog.builtin() is Catalog.builtin()


def test_builtin_kv_facts() -> None:
    catalog = Catalog.builtin()
    assert kv_bytes_per_token(catalog["llama-3-8b"]) == 131_072
    assert kv_bytes_per_token(catalog["meta-llama/Llama-3.1-8B-Instruct"]) == 131_072
    assert kv_bytes_per_token(catalog["llama-3.1-70b"]) == 327_680
    assert kv_bytes_per_token(catalog["llama-3-70b"]) == 327_680
    assert kv_bytes_per_token(catalog["llama-3.1-405b"]) == 516_096
    assert kv_bytes_per_token(catalog["deepseek-v3"]) == 70_272


def test_builtin_special_entries() -> None:
    catalog = Catalog.builtin()
    deepseek = catalog["deepseek-ai/DeepSeek-V3"]
    assert deepseek.attention == "mla" and deepseek.quantization == "fp8"
    assert deepseek.weights_bytes is not None
    gpt_oss = catalog["openai/gpt-oss-120b"]
    assert gpt_oss.quantization == "mxfp4" and gpt_oss.attention_sinks
    assert gpt_oss.sliding_window == 128 and gpt_oss.sliding_window_layers == 18
    assert weights_bytes(gpt_oss) == round(60.8 * 1024**3)  # model card checkpoint size
    assert catalog["Qwen/Qwen3-32B"].head_dim == 128
    for spec in catalog.values():
        assert spec.max_model_len >= 8192, spec.name
        # Every spec's KV size is a whole number of bytes per layer.
        assert kv_bytes_per_token(spec) % spec.num_layers == 0, spec.name


# ---------------------------------------------------------------------- look-ups


def test_lookup_is_case_insensitive_with_aliases_and_revisions() -> None:
    catalog = Catalog.builtin()
    canonical = catalog["meta-llama/Llama-3.1-70B-Instruct"]
    assert catalog.get("META-LLAMA/llama-3.1-70b-instruct") is canonical
    assert catalog.get("llama-3.1-70b") is canonical
    assert catalog.get("Llama-3.1-70B") is canonical
    assert catalog.get("meta-llama/Llama-3.1-70B-Instruct@main") is canonical
    assert catalog.get("  meta-llama/Llama-3.1-70B-Instruct@0123abcd ") is canonical
    assert catalog.get("no-such/model") is None
    assert catalog.get("") is None
    assert catalog.get("no-such/model", canonical) is canonical
    assert "llama-3.1-70b" in catalog
    assert "no-such/model" not in catalog
    with pytest.raises(KeyError):
        catalog["no-such/model"]


def test_lookup_falls_back_to_a_unique_repository_name() -> None:
    catalog = Catalog.builtin()
    # A re-upload under another organisation is the same network.
    assert (
        catalog.get("unsloth/Llama-3.1-8B-Instruct") is catalog["meta-llama/Llama-3.1-8B-Instruct"]
    )
    assert catalog.get("Llama-3.1-8B-Instruct") is catalog["meta-llama/Llama-3.1-8B-Instruct"]


def test_ambiguous_repository_name_does_not_resolve() -> None:
    catalog = Catalog.from_yaml(
        SMALL_YAML + SMALL_YAML.replace("example/tiny-7b", "other/tiny-7b").replace("[tiny]", "[]")
    )
    assert catalog.get("example/tiny-7b") is not None
    assert catalog.get("third/tiny-7b") is None


def test_catalog_is_a_read_only_mapping() -> None:
    catalog = Catalog.from_yaml(SMALL_YAML)
    assert isinstance(catalog, Mapping)
    assert list(catalog) == ["example/tiny-7b"]
    assert catalog.names() == ("example/tiny-7b",)
    assert dict(catalog)["example/tiny-7b"].params_total == 7_000_000_000
    assert repr(catalog) == "Catalog(1 models)"
    assert not hasattr(catalog, "__setitem__")


# ---------------------------------------------------------------------- YAML


def test_from_yaml_direct_fields_and_defaults() -> None:
    spec = Catalog.from_yaml(SMALL_YAML)["tiny"]
    assert spec.head_dim == 128  # hidden / heads
    assert spec.attention == "gqa"  # inferred from the head counts
    assert spec.dtype == "bf16"
    assert kv_bytes_per_token(spec) == 131_072


def test_from_yaml_mapping_form_synonyms_and_units() -> None:
    text = """
    example/mha-1b:
      params: 1.1B
      num_hidden_layers: 22
      hidden_size: 2048
      num_attention_heads: 32
      max_position_embeddings: 2048
      torch_dtype: float16
      weights_bytes: 2.2GB
    example/latent:
      params_total: 16B
      num_layers: 27
      hidden_size: 2048
      num_attention_heads: 16
      head_dim: 192
      kv_lora_rank: 512
      qk_rope_head_dim: 64
      max_model_len: 163840
    """
    catalog = Catalog.from_yaml(textwrap.dedent(text))
    mha = catalog["example/mha-1b"]
    assert (mha.num_layers, mha.num_kv_heads, mha.attention, mha.dtype) == (22, 32, "mha", "fp16")
    assert mha.weights_bytes == 2_200_000_000
    latent = catalog["example/latent"]
    assert latent.attention == "mla"
    assert kv_bytes_per_token(latent) == 27 * (512 + 64) * 2


def test_from_yaml_models_key_and_params_from_weights() -> None:
    text = """
    models:
      - name: example/fp8-only-size
        num_layers: 32
        hidden_size: 4096
        num_attention_heads: 32
        num_kv_heads: 8
        max_model_len: 8192
        dtype: fp8
        weights_bytes: 8GB
    """
    spec = Catalog.from_yaml(textwrap.dedent(text))["example/fp8-only-size"]
    assert spec.params_total == 8_000_000_000  # 8 GB at one byte per parameter
    assert weights_bytes(spec) == 8_000_000_000


def test_from_yaml_with_embedded_hf_config_and_overrides() -> None:
    config = json.loads((FIXTURES / "Qwen3-32B" / "config.json").read_text())
    document = [
        {
            "name": "my-org/qwen3-32b-finetune",
            "aliases": ["qwen-ft"],
            "max_model_len": 16384,
            "hf_config": config,
        }
    ]
    spec = Catalog.from_yaml(yaml.safe_dump(document))["qwen-ft"]
    assert spec.name == "my-org/qwen3-32b-finetune"
    assert spec.max_model_len == 16384  # override beats max_position_embeddings
    assert spec.head_dim == 128 and spec.params_total == 32_762_123_264


def test_from_yaml_with_hf_config_path(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "Mixtral-8x7B-Instruct-v0.1", tmp_path / "mixtral")
    (tmp_path / "catalog.yaml").write_text(
        "- name: local/mixtral\n  hf_config: mixtral/config.json\n"
        "- name: local/mixtral-dir\n  hf_config: mixtral\n"
    )
    catalog = Catalog.from_path(tmp_path / "catalog.yaml")
    assert catalog["local/mixtral"].params_total == 46_702_792_704
    assert catalog["local/mixtral-dir"].params_total == 46_702_792_704


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- {name: a/b, num_layers: 1}", "a/b"),
        ("- {name: a/b, num_layers: 1, bogus: 3}", "unknown field 'bogus'"),
        ("[1, 2", "not valid YAML"),
        ("42", "list of entries"),
        ("- just-a-string", "must be a mapping"),
        ("- {num_layers: 3}", "no name"),
        ("- {name: a/b, hf_config: 12}", "hf_config must be"),
        ("- {name: a/b, hf_config: /no/such/config.json}", "cannot read"),
    ],
)
def test_from_yaml_errors_name_the_entry(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Catalog.from_yaml(text, source="test.yaml")


def test_from_yaml_missing_field_is_named() -> None:
    text = SMALL_YAML.replace("  max_model_len: 8192\n", "")
    with pytest.raises(ValueError, match=r"example/tiny-7b.*max_model_len"):
        Catalog.from_yaml(text, source="test.yaml")


def test_from_yaml_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        Catalog.from_yaml(SMALL_YAML + SMALL_YAML.replace("example/tiny-7b", "EXAMPLE/tiny-7b"))


def test_empty_yaml_is_an_empty_catalog() -> None:
    assert len(Catalog.from_yaml("")) == 0
    assert len(Catalog.from_yaml("# nothing here\n")) == 0


# ---------------------------------------------------------------------- merging


def test_merged_later_wins() -> None:
    builtin = Catalog.builtin()
    override = Catalog.from_yaml(
        """
        - name: META-LLAMA/Llama-3.1-8B-Instruct
          aliases: [my-8b]
          params_total: 8030261248
          num_layers: 32
          hidden_size: 4096
          num_attention_heads: 32
          num_kv_heads: 8
          max_model_len: 16384
        """
    )
    merged = builtin.merged(override)
    assert len(merged) == len(builtin)
    spec = merged["meta-llama/Llama-3.1-8B-Instruct"]
    assert spec.max_model_len == 16384
    assert merged["my-8b"] is spec
    # The replaced entry's aliases went with it; other models are untouched.
    assert (
        merged.get("llama-3.1-8b") is None or merged["llama-3.1-8b"] is not builtin["llama-3.1-8b"]
    )
    assert merged["llama-3.1-70b"] is builtin["llama-3.1-70b"]
    assert builtin["meta-llama/Llama-3.1-8B-Instruct"].max_model_len == 131072  # unchanged


def test_merged_alias_of_a_new_model_beats_an_old_alias() -> None:
    base = Catalog.from_yaml(SMALL_YAML)
    newer = Catalog.from_yaml(SMALL_YAML.replace("example/tiny-7b", "example/tiny-7b-v2"))
    merged = base.merged(newer)
    assert merged["tiny"].name == "example/tiny-7b-v2"
    assert merged["example/tiny-7b"].name == "example/tiny-7b"  # canonical names still resolve


# ---------------------------------------------------------------------- ConfigMap


def test_from_configmap() -> None:
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kvsched-models", "namespace": "kvsched-system"},
        "data": {
            "models.yaml": SMALL_YAML,
            "zz-override.yaml": SMALL_YAML.replace("max_model_len: 8192", "max_model_len: 4096"),
            "Qwen--Qwen3-32B.json": (FIXTURES / "Qwen3-32B" / "config.json").read_text(),
        },
    }
    catalog = Catalog.from_configmap(configmap)
    assert catalog["tiny"].max_model_len == 4096  # keys in sorted order, later wins
    assert catalog["Qwen/Qwen3-32B"].head_dim == 128
    merged = Catalog.builtin().merged(catalog)
    assert merged["tiny"].max_model_len == 4096
    assert merged["llama-3.1-70b"].num_layers == 80


def test_from_configmap_as_printed_by_kubectl_yaml() -> None:
    printed = textwrap.dedent(
        """
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: models
        data:
          models.yaml: |
            - name: example/tiny-7b
              params_total: 7B
              num_layers: 32
              hidden_size: 4096
              num_attention_heads: 32
              num_kv_heads: 8
              max_model_len: 8192
        """
    )
    catalog = Catalog.from_configmap(yaml.safe_load(printed))
    assert catalog.names() == ("example/tiny-7b",)


def test_from_configmap_errors() -> None:
    with pytest.raises(ValueError, match="kind 'Secret'"):
        Catalog.from_configmap({"kind": "Secret", "data": {}})
    with pytest.raises(ValueError, match=r"ConfigMap m key bad\.yaml"):
        Catalog.from_configmap({"metadata": {"name": "m"}, "data": {"bad.yaml": "- {name: x/y}"}})
    assert len(Catalog.from_configmap({"kind": "ConfigMap", "metadata": {"name": "empty"}})) == 0


# ---------------------------------------------------------------------- paths


def test_from_path_hf_folder_named_by_folder() -> None:
    catalog = Catalog.from_path(FIXTURES / "meta-llama--Llama-3.1-8B-Instruct")
    assert catalog.names() == ("meta-llama/Llama-3.1-8B-Instruct",)


def test_from_path_hf_folder_named_by_name_or_path() -> None:
    catalog = Catalog.from_path(FIXTURES / "Qwen2.5-7B-Instruct")
    assert catalog.names() == ("Qwen/Qwen2.5-7B-Instruct",)


def test_from_path_hf_cache_layout(tmp_path: Path) -> None:
    snapshot = tmp_path / "models--meta-llama--Llama-3.1-8B-Instruct" / "snapshots" / "0e9e39f"
    snapshot.mkdir(parents=True)
    shutil.copy(FIXTURES / "meta-llama--Llama-3.1-8B-Instruct" / "config.json", snapshot)
    assert Catalog.from_path(snapshot).names() == ("meta-llama/Llama-3.1-8B-Instruct",)
    assert Catalog.from_path(snapshot / "config.json").names() == (
        "meta-llama/Llama-3.1-8B-Instruct",
    )


def test_from_path_folder_of_models_and_yaml(tmp_path: Path) -> None:
    for folder in ("Mixtral-8x7B-Instruct-v0.1", "DeepSeek-V3", "gemma-3-27b-it"):
        shutil.copytree(FIXTURES / folder, tmp_path / folder)
    (tmp_path / "extra.yml").write_text(SMALL_YAML)
    (tmp_path / ".hidden.yaml").write_text("not: [valid")
    (tmp_path / "README.md").write_text("ignored")
    catalog = Catalog.from_path(tmp_path)
    assert set(catalog.names()) == {
        "mistralai/Mixtral-8x7B-Instruct-v0.1",
        "deepseek-ai/DeepSeek-V3",
        "google/gemma-3-27b-it",
        "example/tiny-7b",
    }


def test_from_path_broken_config_names_file_and_key() -> None:
    with pytest.raises(ValueError, match=r"broken-no-heads.*num_attention_heads"):
        Catalog.from_path(FIXTURES / "broken-no-heads")


def test_from_path_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        Catalog.from_path(tmp_path / "nope.yaml")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Catalog.from_path(tmp_path / "bad.json")


def test_from_path_json_catalog_document(tmp_path: Path) -> None:
    (tmp_path / "catalog.json").write_text(json.dumps(yaml.safe_load(SMALL_YAML)))
    spec = Catalog.from_path(tmp_path / "catalog.json")["tiny"]
    assert isinstance(spec, ModelSpec)
