"""The model catalog: model id -> :class:`~scheduler.models.spec.ModelSpec`.

Sources, each turned into an immutable :class:`Catalog` and combined with
:meth:`Catalog.merged` (later wins):

* the built-in ``scheduler/data/catalog.yaml`` (:meth:`Catalog.builtin`);
* YAML text (:meth:`Catalog.from_yaml`), e.g. a platform team's own list;
* a Kubernetes ConfigMap whose data keys hold such YAML (:meth:`Catalog.from_configmap`);
* files and folders on disk, YAML or Hugging Face ``config.json`` (:meth:`Catalog.from_path`).

A YAML document is a list of entries, a mapping ``name -> entry``, or ``{models: <either>}``.
An entry either states the architecture directly::

    - name: meta-llama/Llama-3.1-8B-Instruct
      aliases: [llama-3.1-8b]
      params_total: 8.03B            # or 8_030_261_248
      num_layers: 32
      hidden_size: 4096
      num_attention_heads: 32
      num_kv_heads: 8                # default: num_attention_heads (MHA)
      head_dim: 128                  # default: hidden_size / num_attention_heads
      max_model_len: 131072
      dtype: bf16                    # default bf16
      weights_bytes: 16.1GB          # optional explicit checkpoint size

or embeds / points at a Hugging Face config (``hf_config: {...}`` or
``hf_config: path/to/config.json`` relative to the YAML file), with any spec field next to
it as an override (``aliases``, ``weights_bytes``, ``max_model_len``...). ``attention`` is
inferred from the head counts (``mla`` when ``kv_lora_rank`` is given) unless stated, and
``params_total`` may be left out when ``weights_bytes`` is given (it is then derived from
the dtype).

Look-ups are case-insensitive, accept aliases, ignore a trailing revision (``org/name@rev``)
and, when nothing matches, fall back to the repository name without its organisation if that
names exactly one model (``unsloth/Llama-3.1-8B-Instruct`` is the same network as Meta's).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, overload

import yaml
from pydantic import ValidationError

from scheduler.models.dtypes import dtype_bytes
from scheduler.models.hf_config import estimate_params, spec_from_hf_config
from scheduler.models.spec import ModelSpec, infer_attention_kind
from scheduler.models.units import parse_bytes, parse_count

__all__ = ["Catalog", "estimate_params", "spec_from_hf_config"]

_T = TypeVar("_T")

_SPEC_FIELDS = frozenset(ModelSpec.model_fields)
# Spellings people copy from config.json or model cards -> ModelSpec field.
_FIELD_SYNONYMS: Mapping[str, str] = {
    "num_hidden_layers": "num_layers",
    "layers": "num_layers",
    "num_key_value_heads": "num_kv_heads",
    "kv_heads": "num_kv_heads",
    "max_position_embeddings": "max_model_len",
    "params": "params_total",
    "torch_dtype": "dtype",
}
_YAML_SUFFIXES = (".yaml", ".yml")
_HF_CONFIG_FILE = "config.json"
_HF_CACHE_FOLDER = re.compile(r"^models--(?P<org>[^/]+?)--(?P<name>[^/]+)$")


def _lookup_key(name: str) -> str:
    """Normalise a model reference for look-up: trim, drop ``@revision``, lower-case."""
    reference = name.strip()
    if "@" in reference:
        reference = reference.split("@", 1)[0]
    return reference.strip().lower()


def _basename(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def _format_validation_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)


class Catalog(Mapping[str, ModelSpec]):
    """Immutable collection of model specs, keyed by canonical model id.

    Iteration yields canonical names in insertion order; indexing and :meth:`get` resolve
    references the way the module docstring describes. When two specs share a name
    (case-insensitively) the later one wins; canonical names take precedence over aliases.
    """

    __slots__ = ("_by_basename", "_index", "_specs")

    def __init__(self, specs: Iterable[ModelSpec] = ()) -> None:
        by_key: dict[str, ModelSpec] = {}
        for spec in specs:
            key = spec.name.lower()
            by_key.pop(key, None)  # re-insert so that order follows the winning definition
            by_key[key] = spec
        index: dict[str, str] = {}
        for key, spec in by_key.items():
            for alias in spec.aliases:
                index[alias.lower()] = key
        for key in by_key:
            index[key] = key
        by_basename: dict[str, set[str]] = {}
        for key in by_key:
            by_basename.setdefault(_basename(key), set()).add(key)
        self._specs: Mapping[str, ModelSpec] = by_key
        self._index: Mapping[str, str] = index
        self._by_basename: Mapping[str, frozenset[str]] = {
            base: frozenset(keys) for base, keys in by_basename.items()
        }

    # ------------------------------------------------------------------ look-up

    def _resolve(self, name: str) -> ModelSpec | None:
        key = _lookup_key(name)
        if not key:
            return None
        canonical = self._index.get(key)
        if canonical is None:
            candidates = self._by_basename.get(_basename(key), frozenset())
            if len(candidates) != 1:
                return None
            (canonical,) = candidates
        return self._specs[canonical]

    @overload
    def get(self, name: str) -> ModelSpec | None: ...

    @overload
    def get(self, name: str, default: ModelSpec | _T) -> ModelSpec | _T: ...

    def get(self, name: str, default: object = None) -> object:
        """The spec ``name`` refers to, or ``default`` (``None``) when the catalog lacks it."""
        spec = self._resolve(name)
        return default if spec is None else spec

    def __getitem__(self, name: str) -> ModelSpec:
        spec = self._resolve(name)
        if spec is None:
            raise KeyError(name)
        return spec

    def __iter__(self) -> Iterator[str]:
        return (spec.name for spec in self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"Catalog({len(self)} models)"

    def names(self) -> tuple[str, ...]:
        """Canonical model ids, in catalog order."""
        return tuple(spec.name for spec in self._specs.values())

    def specs(self) -> tuple[ModelSpec, ...]:
        """All specs, in catalog order."""
        return tuple(self._specs.values())

    def merged(self, other: Catalog) -> Catalog:
        """A catalog with ``other``'s specs over this one's (same name: ``other`` wins)."""
        return Catalog([*self._specs.values(), *other.specs()])

    # ------------------------------------------------------------------ sources

    @classmethod
    def builtin(cls) -> Catalog:
        """The catalog shipped in ``scheduler/data/catalog.yaml`` (loaded once, cached)."""
        return _builtin_catalog()

    @classmethod
    def from_yaml(cls, text: str, *, base_dir: Path | None = None, source: str = "YAML") -> Catalog:
        """Parse a catalog document (module docstring). ``hf_config:`` paths are relative to
        ``base_dir`` (default: the current directory). Raises ``ValueError`` naming ``source``
        and the entry on any problem."""
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{source}: not valid YAML: {exc}") from None
        return _catalog_from_document(document, base_dir=base_dir, source=source)

    @classmethod
    def from_configmap(cls, obj: Mapping[str, Any]) -> Catalog:
        """Catalog from a ConfigMap as ``kubectl get configmap -o yaml|json`` prints it.

        Every key of ``data`` holds a catalog YAML document (or a single Hugging Face
        ``config.json``, named by its ``_name_or_path`` or by the key: ``org--name.json``).
        Keys are read in sorted order, later keys winning on duplicate models.
        """
        if not isinstance(obj, Mapping):
            raise ValueError("ConfigMap must be a mapping")
        kind = obj.get("kind")
        if kind not in (None, "ConfigMap"):
            raise ValueError(f"expected a ConfigMap, got kind {kind!r}")
        metadata = obj.get("metadata")
        name = metadata.get("name", "?") if isinstance(metadata, Mapping) else "?"
        data = obj.get("data") or {}
        if not isinstance(data, Mapping):
            raise ValueError(f"ConfigMap {name}: data must be a mapping of key -> text")
        catalog = Catalog()
        for key in sorted(data):
            text = data[key]
            if not isinstance(text, str):
                raise ValueError(f"ConfigMap {name} key {key}: value must be text")
            source = f"ConfigMap {name} key {key}"
            try:
                document = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ValueError(f"{source}: not valid YAML: {exc}") from None
            part = _catalog_from_document(
                document, base_dir=None, source=source, name_hint=_name_from_file_name(key)
            )
            catalog = catalog.merged(part)
        return catalog

    @classmethod
    def from_path(cls, path: str | Path) -> Catalog:
        """Catalog from a YAML/JSON file or a folder.

        A folder holding ``config.json`` is one model, named by the config's
        ``_name_or_path`` when that is a hub id, else by the folder (``org--name`` and
        Hugging Face cache folders ``models--org--name`` become ``org/name``). Any other folder
        is read file by file (``*.yaml``, ``*.yml``, ``*.json``) and subfolder by subfolder, in
        sorted order, later files winning.
        """
        target = Path(path)
        if target.is_dir():
            if (target / _HF_CONFIG_FILE).is_file():
                return _catalog_from_hf_file(target / _HF_CONFIG_FILE)
            catalog = Catalog()
            for child in sorted(target.iterdir()):
                if child.name.startswith("."):
                    continue
                if child.is_dir() or child.suffix.lower() in (*_YAML_SUFFIXES, ".json"):
                    catalog = catalog.merged(cls.from_path(child))
            return catalog
        if not target.is_file():
            raise ValueError(f"catalog path {target} does not exist")
        if target.suffix.lower() == ".json":
            return _catalog_from_hf_file(target)
        return cls.from_yaml(_read_text(target), base_dir=target.parent, source=str(target))


@functools.cache
def _builtin_catalog() -> Catalog:
    text = resources.files("scheduler").joinpath("data/catalog.yaml").read_text("utf-8")
    return Catalog.from_yaml(text, source="built-in catalog.yaml")


def _read_text(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None


# ---------------------------------------------------------------------- naming


def _looks_like_hub_id(value: object) -> bool:
    if not isinstance(value, str) or not value or value.startswith(("/", ".", "~")):
        return False
    return value.count("/") == 1 and all(part.strip() for part in value.split("/"))


def _name_from_folder(folder: Path) -> str:
    """Model id implied by a folder: HF cache layout, ``org--name``, or the folder name."""
    for part in reversed(folder.resolve().parts):
        match = _HF_CACHE_FOLDER.match(part)
        if match:
            return f"{match['org']}/{match['name']}"
    return folder.name.replace("--", "/", 1)


def _name_from_file_name(file_name: str) -> str:
    """``org--name.json`` -> ``org/name`` (ConfigMap keys cannot hold a slash)."""
    stem = file_name.rsplit(".", 1)[0] if "." in file_name else file_name
    return stem.replace("--", "/", 1)


def _is_hf_config(document: object) -> bool:
    return isinstance(document, Mapping) and (
        "architectures" in document
        or (
            "model_type" in document
            and ("text_config" in document or "num_hidden_layers" in document)
        )
    )


def _catalog_from_hf_file(path: Path) -> Catalog:
    try:
        document = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    if not _is_hf_config(document):
        # A .json file that is not a model config is a catalog document written as JSON.
        return _catalog_from_document(document, base_dir=path.parent, source=str(path))
    if path.name == _HF_CONFIG_FILE:
        fallback = _name_from_folder(path.parent)
    else:
        fallback = _name_from_file_name(path.name)
    return Catalog([_spec_from_named_hf_config(document, fallback, str(path))])


def _spec_from_named_hf_config(
    config: Mapping[str, Any], fallback_name: str, source: str
) -> ModelSpec:
    declared = config.get("_name_or_path")
    name = declared if _looks_like_hub_id(declared) else fallback_name
    assert isinstance(name, str)
    try:
        return spec_from_hf_config(name, config)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


# ---------------------------------------------------------------------- documents


def _catalog_from_document(
    document: object, *, base_dir: Path | None, source: str, name_hint: str | None = None
) -> Catalog:
    if document is None:
        return Catalog()
    if _is_hf_config(document):
        assert isinstance(document, Mapping)
        if name_hint is None and not _looks_like_hub_id(document.get("_name_or_path")):
            raise ValueError(
                f"{source}: a config.json without _name_or_path needs a name: "
                "wrap it as {name: ..., hf_config: {...}}"
            )
        return Catalog([_spec_from_named_hf_config(document, name_hint or "", source)])
    if isinstance(document, Mapping) and set(document) == {"models"}:
        document = document["models"]
    entries: list[tuple[str | None, object]]
    if isinstance(document, list):
        entries = [(None, entry) for entry in document]
    elif isinstance(document, Mapping):
        entries = [(str(key), entry) for key, entry in document.items()]
    else:
        raise ValueError(
            f"{source}: a catalog is a list of entries or a mapping of name -> entry, "
            f"not {type(document).__name__}"
        )
    specs: list[ModelSpec] = []
    seen: set[str] = set()
    for position, (key, entry) in enumerate(entries, start=1):
        declared_name = entry.get("name") if isinstance(entry, Mapping) else None
        label = key or (declared_name if isinstance(declared_name, str) else f"entry {position}")
        if not isinstance(entry, Mapping):
            raise ValueError(f"{source}: {label}: an entry must be a mapping")
        spec = _spec_from_entry(entry, key, base_dir, f"{source}: {label}")
        if spec.name.lower() in seen:
            raise ValueError(f"{source}: model {spec.name} is listed twice")
        seen.add(spec.name.lower())
        specs.append(spec)
    return Catalog(specs)


def _canonical_fields(entry: Mapping[str, Any], where: str) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for raw_key, value in entry.items():
        key = _FIELD_SYNONYMS.get(str(raw_key), str(raw_key))
        if key not in _SPEC_FIELDS and key != "hf_config":
            valid = ", ".join(sorted(_SPEC_FIELDS | {"hf_config"}))
            raise ValueError(f"{where}: unknown field {raw_key!r} (valid: {valid})")
        if key in fields:
            raise ValueError(f"{where}: field {key} given twice (as {raw_key!r})")
        fields[key] = value
    for count_field in ("params_total", "params_active"):
        if isinstance(fields.get(count_field), str | float):
            fields[count_field] = parse_count(fields[count_field], count_field)
    if isinstance(fields.get("weights_bytes"), str | float):
        fields["weights_bytes"] = parse_bytes(fields["weights_bytes"], "weights_bytes")
    if isinstance(fields.get("aliases"), str):
        fields["aliases"] = (fields["aliases"],)
    elif isinstance(fields.get("aliases"), list):
        fields["aliases"] = tuple(fields["aliases"])
    return fields


def _hf_config_of(reference: object, base_dir: Path | None, where: str) -> Mapping[str, Any]:
    if isinstance(reference, Mapping):
        return reference
    if not isinstance(reference, str):
        raise ValueError(f"{where}: hf_config must be a mapping or a path to config.json")
    path = Path(reference).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    if path.is_dir():
        path = path / _HF_CONFIG_FILE
    try:
        loaded = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: {path} is not valid JSON: {exc}") from None
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{where}: {path} does not hold a JSON object")
    return loaded


def _fill_direct_defaults(fields: dict[str, Any], where: str) -> None:
    """Defaults for an entry that states the architecture itself (module docstring)."""
    heads, hidden = fields.get("num_attention_heads"), fields.get("hidden_size")
    if isinstance(heads, int):
        fields.setdefault("num_kv_heads", heads)  # no KV head count: plain multi-head
    if (
        "head_dim" not in fields
        and isinstance(heads, int)
        and isinstance(hidden, int)
        and heads > 0
    ):
        if hidden % heads != 0:
            raise ValueError(
                f"{where}: give head_dim: hidden_size {hidden} is not divisible by "
                f"num_attention_heads {heads}"
            )
        fields["head_dim"] = hidden // heads
    if "attention" not in fields:
        kv_heads = fields.get("num_kv_heads")
        if fields.get("kv_lora_rank") is not None:
            fields["attention"] = "mla"
        elif isinstance(heads, int) and isinstance(kv_heads, int):
            fields["attention"] = infer_attention_kind(heads, kv_heads)
    if "params_total" not in fields and isinstance(fields.get("weights_bytes"), int):
        # Only the checkpoint size is known: params follow from the storage dtype.
        element_bytes = dtype_bytes(str(fields.get("dtype", "bf16")))
        fields["params_total"] = math.ceil(fields["weights_bytes"] / element_bytes)


def _spec_from_entry(
    entry: Mapping[str, Any], key: str | None, base_dir: Path | None, where: str
) -> ModelSpec:
    try:
        fields = _canonical_fields(entry, where)
        name = fields.get("name", key)
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}: entry has no name")
        fields["name"] = name.strip()
        if "hf_config" in fields:
            config = _hf_config_of(fields.pop("hf_config"), base_dir, where)
            base = spec_from_hf_config(fields["name"], config)
            return base.replace(**fields)
        _fill_direct_defaults(fields, where)
        return ModelSpec.model_validate(fields)
    except ValidationError as exc:
        raise ValueError(f"{where}: {_format_validation_error(exc)}") from None
    except ValueError as exc:
        message = str(exc)
        raise ValueError(message if message.startswith(where) else f"{where}: {message}") from None
