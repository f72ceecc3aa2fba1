"""The zoo registry: ``zoo.toml`` validated into typed :class:`ZooEntry` objects.

Presets are data. The packaged ``zoo.toml`` holds the five SignFlow presets; a user file given with
``--zoo PATH`` or the ``SIGNFLOW_ZOO_FILE`` environment variable adds entries (or overrides one by name).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from signflow_zoo.common.documents import DocumentError, loads_toml
from signflow_zoo.common.errors import ZooError
from signflow_zoo.common.tensors import FEATURE_DIM  # = signflow_zoo.data.features.FEATURE_DIM, without numpy

ZOO_ENV_VAR = "SIGNFLOW_ZOO_FILE"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class ZooEntry:
    """One model-size preset of SignTransformer."""

    name: str  # unique preset name
    d_model: int  # model width (divisible by heads)
    heads: int  # attention heads
    layers: int  # encoder layers
    dim_ff: int  # feed-forward width
    dropout: float  # transformer dropout
    feature_dropout: float  # dropout after the input embedding
    pooling_dropout: float  # dropout before the classification head
    use_case: str  # what the preset is meant for
    epochs: int = 10  # default training epochs on the bundled synthetic data
    source: str = ""  # the zoo file this entry came from

    # The seed's names ------------------------------------------------------------------
    @property
    def num_heads(self) -> int:
        return self.heads

    @property
    def num_layers(self) -> int:
        return self.layers

    def to_model_kwargs(self, num_classes: int = 100, input_dim: int | None = None) -> dict[str, Any]:
        """Keyword arguments for :class:`signflow_zoo.model.network.SignTransformer`."""
        return {
            "input_dim": input_dim or FEATURE_DIM,
            "num_classes": int(num_classes),
            "d_model": self.d_model,
            "nhead": self.heads,
            "num_layers": self.layers,
            "dim_feedforward": self.dim_ff,
            "dropout": self.dropout,
            "feature_dropout": self.feature_dropout,
            "pooling_dropout": self.pooling_dropout,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "d_model": (int,),
    "heads": (int,),
    "layers": (int,),
    "dim_ff": (int,),
    "dropout": (float, int),
    "feature_dropout": (float, int),
    "pooling_dropout": (float, int),
    "use_case": (str,),
    "epochs": (int,),
}

# The one table of size bounds, in SignTransformer's argument names: zoo.toml entries and checkpoint
# metadata are both checked against it. The upper bounds sit far above any preset (xlarge: 512 / 8 / 8 /
# 2048) yet stop a typo or a crafted file from asking for terabytes before a single weight is read.
SIZE_BOUNDS: dict[str, tuple[int, int]] = {
    "d_model": (3, 4096),  # at least 3: the temporal stem splits it in three
    "nhead": (1, 64),
    "num_layers": (1, 64),
    "dim_feedforward": (1, 16384),
    "num_classes": (1, 100_000),
    "max_rel_distance": (1, 4096),
}


MAX_PARAMETERS = 1_000_000_000  # 4 GB of fp32 weights: well past xlarge (28M); stops absurd sizes before allocation
MAX_EPOCHS = 10_000


def parameter_count(d_model: int, nhead: int, num_layers: int, dim_feedforward: int, num_classes: int = 100,
                    input_dim: int = FEATURE_DIM, max_rel_distance: int = 64) -> int:
    """SignTransformer's exact parameter count, computed without building it (tests pin it to the model)."""
    d, ff, c1 = d_model, dim_feedforward, d_model // 3
    c3 = d - 2 * c1
    n = 2 * input_dim + input_dim * d + d  # input norm, embedding
    n += sum(input_dim * c * k + c for c, k in ((c1, 3), (c1, 5), (c3, 7)))  # multiscale stem
    n += 2 * d * d + d + d + 2 * max_rel_distance + 1  # fuse, CLS token, relative bias
    n += num_layers * (4 * d * d + 2 * d * ff + 9 * d + ff)  # encoder blocks
    n += 2 * d + (2 * d * d + d) + (d + 1)  # output norm, pooling gate MLP
    n += d * num_classes + num_classes + num_classes * d + 1 + d * d + d  # classifier, prototypes, scale, metric proj
    return n


def parameters_problem(count: int) -> str | None:
    if count > MAX_PARAMETERS:
        return (f"would have {count / 1e9:.1f}B parameters ({count * 4 / 2**30:.0f} GiB of fp32 weights); "
                f"the limit is {MAX_PARAMETERS / 1e9:.0f}B")
    return None


def size_problem(name: str, value: Any) -> str | None:
    """What is wrong with ``value`` as the size ``name`` (a key of :data:`SIZE_BOUNDS`), or None."""
    lo, hi = SIZE_BOUNDS[name]
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer in [{lo}, {hi}], got {type(value).__name__} {value!r}"
    if not lo <= value <= hi:
        return f"must be an integer in [{lo}, {hi}], got {value}"
    return None


# zoo.toml key -> SignTransformer argument
_SIZE_ARGS = {"d_model": "d_model", "heads": "nhead", "layers": "num_layers", "dim_ff": "dim_feedforward"}
_REQUIRED = [f.name for f in fields(ZooEntry) if f.name not in ("epochs", "source")]
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number"}


def _err(path: Path | str, entry: str, key: str | None, msg: str) -> ZooError:
    where = f"{path}: entry {entry}" + (f", key {key!r}" if key else "")
    return ZooError(f"{where}: {msg}")


def _validate_entry(raw: Any, index: int, path: Path | str) -> ZooEntry:
    label = f"#{index + 1}"
    if not isinstance(raw, dict):
        raise _err(path, label, None, "each [[entry]] must be a table of keys")
    if isinstance(raw.get("name"), str):
        label = f"#{index + 1} ({raw['name']!r})"
    unknown = sorted(set(raw) - set(_TYPES))
    if unknown:
        raise _err(path, label, unknown[0], f"unknown key; valid keys are: {', '.join(_TYPES)}")
    for key in _REQUIRED:
        if key not in raw:
            raise _err(path, label, key, "missing required key")
    for key, value in raw.items():
        allowed = _TYPES[key]
        # bool is an int subclass in Python; a preset size of `true` is a typo, not a number.
        if isinstance(value, bool) or not isinstance(value, allowed):
            want = " or ".join(_TYPE_NAMES[t] for t in allowed)
            raise _err(path, label, key, f"must be {want}, got {type(value).__name__} {value!r}")
    if not NAME_RE.match(raw["name"]):
        raise _err(path, label, "name", "must be lowercase letters, digits, '-' or '_'")
    for key, arg in _SIZE_ARGS.items():
        problem = size_problem(arg, raw[key])
        if problem:
            raise _err(path, label, key, problem)
    if "epochs" in raw and not 0 < raw["epochs"] <= MAX_EPOCHS:
        raise _err(path, label, "epochs", f"must be an integer in [1, {MAX_EPOCHS}], got {raw['epochs']}")
    for key in ("dropout", "feature_dropout", "pooling_dropout"):
        if not 0.0 <= float(raw[key]) < 1.0:
            raise _err(path, label, key, f"must be in [0, 1), got {raw[key]}")
    if raw["d_model"] % raw["heads"] != 0:
        raise _err(path, label, "heads", f"heads={raw['heads']} does not divide d_model={raw['d_model']}")
    too_big = parameters_problem(parameter_count(raw["d_model"], raw["heads"], raw["layers"], raw["dim_ff"]))
    if too_big:
        raise _err(path, label, "d_model", f"d_model/layers/dim_ff {too_big}")
    values: dict[str, Any] = {k: (float(v) if k.endswith("dropout") else v) for k, v in raw.items()}
    return ZooEntry(**values, source=str(path))


def parse_zoo(text: str, path: Path | str = "<string>") -> list[ZooEntry]:
    """Validate zoo TOML text into entries; every error names the file, the entry and the key."""
    try:
        doc = loads_toml(text, str(path))  # nesting bounded: a hostile file is a message, not a RecursionError
    except DocumentError as exc:
        raise ZooError(str(exc)) from None
    extra = sorted(set(doc) - {"entry"})
    if extra:
        raise ZooError(f"{path}: unknown top-level key {extra[0]!r}; entries go in [[entry]] tables")
    raw_entries = doc.get("entry")
    if not isinstance(raw_entries, list) or not raw_entries:
        raise ZooError(f"{path}: no [[entry]] tables found; see the packaged zoo.toml for the format")
    entries: list[ZooEntry] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_entries):
        entry = _validate_entry(raw, i, path)
        if entry.name in seen:
            raise _err(path, f"#{i + 1} ({entry.name!r})", "name", "duplicate name in this file")
        seen.add(entry.name)
        entries.append(entry)
    return entries


def load_zoo_file(path: str | os.PathLike) -> list[ZooEntry]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ZooError(f"{p}: zoo file not found (check --zoo or ${ZOO_ENV_VAR})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ZooError(f"{p}: cannot read zoo file: {exc}") from None
    return parse_zoo(text, p)


def builtin_zoo_text() -> str:
    return resources.files("signflow_zoo.model").joinpath("zoo.toml").read_text(encoding="utf-8")


class Zoo:
    """An ordered, validated set of entries: the packaged ones plus an optional user file."""

    def __init__(self, entries: list[ZooEntry]):
        self._entries = {e.name: e for e in entries}

    @classmethod
    def load(cls, user_file: str | os.PathLike | None = None) -> "Zoo":
        entries = {e.name: e for e in parse_zoo(builtin_zoo_text(), "zoo.toml (packaged)")}
        user_file = user_file or os.environ.get(ZOO_ENV_VAR) or None
        if user_file:
            for e in load_zoo_file(user_file):
                entries[e.name] = e  # a user entry with a built-in name overrides it
        return cls(list(entries.values()))

    def names(self) -> list[str]:
        return list(self._entries)

    def __iter__(self):
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> ZooEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise ZooError(f"unknown preset {name!r}; valid presets: {', '.join(self._entries)}") from None

    def select(self, spec: str) -> list[ZooEntry]:
        """``all``, one name, or a comma-separated list of names."""
        spec = (spec or "").strip()
        if spec == "all":
            return list(self)
        names = [s.strip() for s in spec.split(",") if s.strip()]
        if not names:
            raise ZooError(f"no preset given; valid presets: all, {', '.join(self._entries)}")
        return [self.get(n) for n in names]


@lru_cache(maxsize=8)
def _default_zoo(user_file: str | None) -> Zoo:
    return Zoo.load(user_file)


def default_zoo() -> Zoo:
    return _default_zoo(os.environ.get(ZOO_ENV_VAR) or None)


# The seed's API -----------------------------------------------------------------------------
ModelConfig = ZooEntry


def get_model_config(name: str) -> ZooEntry:
    """The preset called ``name`` (raises :class:`ZooError` listing valid names)."""
    return default_zoo().get(name)


def list_model_configs() -> dict[str, ZooEntry]:
    """All presets by name, in zoo order."""
    return {e.name: e for e in default_zoo()}


def list_presets() -> list[str]:
    """Preset names in zoo order."""
    return default_zoo().names()
