"""Dataset specification: a base SimulationConfig plus distributions over dotted config paths.

Item ``i`` of a dataset is a pure function of (spec, i): its simulation seed and every sampled
parameter come from ``numpy.random.SeedSequence`` keyed by the dataset seed, the item index and
(for parameters) a hash of the dotted path. So any item can be regenerated alone, and adding a new
``vary`` entry does not change the values drawn for the others.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import SimulationConfig, config_from_dict, format_validation_error, read_yaml_mapping
from ..core.errors import ConfigError

LAYOUT_VERSION = 1
OUTPUT_CHOICES = ("micrograph", "noiseless", "intensity", "potential", "exit_wave", "movie")
TILT_OUTPUTS = {"micrograph", "noiseless"}  # what a tilt-series item holds (stacks ordered by angle)


class SpecModel(BaseModel):
    """The YAML file's top level (``extra="forbid"``: a typo is an error, not a silent default)."""

    model_config = ConfigDict(extra="forbid")
    seed: int = Field(0, ge=0, description="dataset seed; item i's seed derives from (seed, i)")
    n_items: int = Field(ge=1, description="number of items")
    base: dict | None = Field(None, description="inline SimulationConfig (its own seed is replaced per item)")
    base_config: str | None = Field(None, description="SimulationConfig YAML, relative to the spec file")
    vary: dict[str, Any] = Field(default_factory=dict, description="dotted config path -> distribution")
    outputs: list[Literal[OUTPUT_CHOICES]] = Field(default_factory=lambda: ["micrograph", "noiseless"])
    store: Literal["zarr", "mrc"] = "zarr"
    manifest: Literal["csv", "parquet"] = "csv"


# --- distributions ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    """One distribution over a config value. ``sample`` draws item ``index``'s value."""

    kind: str
    params: dict

    def canonical(self) -> dict:
        return {self.kind: self.params}

    def sample(self, rng: np.random.Generator, index: int):
        p = self.params
        if self.kind == "uniform":
            return _tolist(rng.uniform(p["low"], p["high"], size=_size(p)))
        if self.kind == "loguniform":
            lo, hi = np.log(np.asarray(p["low"], float)), np.log(np.asarray(p["high"], float))
            return _tolist(np.exp(rng.uniform(lo, hi, size=_size(p))))
        if self.kind == "randint":
            return _tolist(rng.integers(p["low"], np.asarray(p["high"]) + 1, size=_size(p)))
        if self.kind == "normal":
            shape = _size(p) or ()
            x = np.array([_truncated_normal(rng, p["mean"], p["std"], p.get("min"), p.get("max"))
                          for _ in range(int(np.prod(shape)))]).reshape(shape)
            return _tolist(x)
        if self.kind == "choice":
            k = int(rng.choice(len(p["values"]), p=p.get("weights")))
            return copy.deepcopy(p["values"][k])
        if self.kind == "cycle":
            return copy.deepcopy(p["values"][index % len(p["values"])])
        if self.kind == "rotations_zyz_deg":
            return _tolist(random_rotations_zyz_deg(rng, p["n"]))
        raise AssertionError(self.kind)

    def support(self) -> list:
        """Values at the edges of the support (or every choice): each must give a valid config."""
        p = self.params
        if self.kind in ("uniform", "loguniform", "randint"):
            shape = _size(p)
            return [_tolist(np.broadcast_to(np.asarray(p[k]), shape) if shape else np.asarray(p[k]))
                    for k in ("low", "high")]
        if self.kind == "normal":
            shape = _size(p)
            vals = [p[k] for k in ("min", "max") if p.get(k) is not None] or [p["mean"]]
            return [_tolist(np.full(shape, v) if shape else np.asarray(v)) for v in vals]
        if self.kind in ("choice", "cycle"):
            return [copy.deepcopy(v) for v in p["values"]]
        if self.kind == "rotations_zyz_deg":
            return [[[0.0, 0.0, 0.0]] * p["n"], [[359.0, 180.0, 359.0]] * p["n"]]
        raise AssertionError(self.kind)


def _size(p: dict) -> tuple | None:
    """Output shape: ``size`` followed by the broadcast shape of the bounds (None: a plain scalar)."""
    bounds = [np.asarray(p[k]) for k in ("low", "high", "mean", "std") if k in p]
    tail = np.broadcast_shapes(*[b.shape for b in bounds]) if bounds else ()
    size = tuple(p.get("size") or ())
    shape = size + tuple(tail)
    return shape or None


def _tolist(x):
    """numpy → plain Python (floats/ints/lists) so configs stay JSON and pydantic sees normal types."""
    return np.asarray(x).tolist()


def _truncated_normal(rng: np.random.Generator, mean: float, std: float, lo: float | None, hi: float | None) -> float:
    """Inverse-CDF sampling of N(mean, std²) restricted to [lo, hi] (exact, no rejection loop)."""
    if lo is None and hi is None:
        return float(rng.normal(mean, std))
    # work in the lower tail (reflect if needed) so CDF values stay far from 1 and keep precision
    flip = lo is not None and lo > mean
    a, b = (-hi if hi is not None else -math.inf, -lo) if flip else (
        lo if lo is not None else -math.inf, hi if hi is not None else math.inf)
    m = -mean if flip else mean
    nd = NormalDist(m, std)
    ca = nd.cdf(a) if math.isfinite(a) else 0.0
    cb = nd.cdf(b) if math.isfinite(b) else 1.0
    u = ca + rng.random() * (cb - ca)
    x = nd.inv_cdf(min(max(u, 1e-300), 1 - 1e-16))
    x = min(max(x, a), b)
    return -x if flip else x


def random_rotations_zyz_deg(rng: np.random.Generator, n: int) -> np.ndarray:
    """n rotations uniform on SO(3) as ZYZ Euler angles (φ, θ, ψ) in degrees.

    The Haar measure in ZYZ angles is ∝ sin θ dφ dθ dψ: φ and ψ uniform, cos θ uniform in [−1, 1].
    """
    phi = rng.uniform(0.0, 360.0, n)
    theta = np.degrees(np.arccos(rng.uniform(-1.0, 1.0, n)))
    psi = rng.uniform(0.0, 360.0, n)
    return np.stack([phi, theta, psi], axis=-1)


_KINDS = ("uniform", "loguniform", "randint", "normal", "choice", "cycle", "rotations_zyz_deg")


def parse_distribution(path: str, obj) -> Dist:
    """Check one ``vary`` entry; errors name ``vary.<path>`` and say what is wrong."""
    where = f"vary.{path}"
    if not isinstance(obj, dict) or len(obj) != 1 or next(iter(obj)) not in _KINDS:
        raise ConfigError(f"{where}: expected one of {{{', '.join(k + ': ...' for k in _KINDS)}}}, got {obj!r}; "
                          "a fixed value belongs in base")
    kind, arg = next(iter(obj.items()))
    if kind in ("uniform", "loguniform", "randint"):
        params = _bounds(where, kind, arg)
    elif kind == "normal":
        params = _normal(where, arg)
    elif kind in ("choice", "cycle"):
        params = _choice(where, kind, arg)
    else:
        n = arg.get("n") if isinstance(arg, dict) else arg
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"{where}: rotations_zyz_deg needs a positive count n (e.g. {{n: 5}}), got {arg!r}")
        params = {"n": n}
    return Dist(kind, params)


def _size_arg(where: str, arg: dict) -> dict:
    size = arg.get("size")
    if size is None:
        return {}
    size = [size] if isinstance(size, int) and not isinstance(size, bool) else size
    if not isinstance(size, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in size):
        raise ConfigError(f"{where}: size must be an integer or a list of integers, got {arg['size']!r}")
    if any(s < 0 for s in size):
        raise ConfigError(f"{where}: size {size} has a negative count; counts must be >= 0")
    return {"size": size}


def _numeric(where: str, name: str, v):
    try:
        a = np.asarray(v, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {name} must be a number or a list of numbers, got {v!r}") from None
    if not np.all(np.isfinite(a)):
        raise ConfigError(f"{where}: {name} must be finite, got {v!r}")
    return v


def _bounds(where: str, kind: str, arg) -> dict:
    if isinstance(arg, list) and len(arg) == 2:
        arg = {"low": arg[0], "high": arg[1]}
    if not isinstance(arg, dict) or set(arg) - {"low", "high", "size"} or not {"low", "high"} <= set(arg):
        raise ConfigError(f"{where}: {kind} takes [low, high] or {{low: ..., high: ..., size: ...}}, got {arg!r}")
    lo, hi = _numeric(where, "low", arg["low"]), _numeric(where, "high", arg["high"])
    try:
        np.broadcast_shapes(np.shape(lo), np.shape(hi))
    except ValueError:
        raise ConfigError(f"{where}: low {lo!r} and high {hi!r} have different shapes") from None
    if np.any(np.asarray(lo, float) > np.asarray(hi, float)):
        raise ConfigError(f"{where}: {kind} low {lo!r} > high {hi!r}; swap them")
    if kind == "randint" and not all(float(v).is_integer() for v in np.ravel([lo, hi])):
        raise ConfigError(f"{where}: randint bounds must be integers, got [{lo!r}, {hi!r}]")
    if kind == "loguniform" and np.any(np.asarray(lo, float) <= 0):
        raise ConfigError(f"{where}: loguniform needs low > 0, got {lo!r}")
    out = {"low": lo, "high": hi, **_size_arg(where, arg)}
    if kind == "randint":
        out["low"], out["high"] = np.asarray(lo).astype(int).tolist(), np.asarray(hi).astype(int).tolist()
    return out


def _normal(where: str, arg) -> dict:
    if not isinstance(arg, dict) or set(arg) - {"mean", "std", "min", "max", "size"} or not {"mean", "std"} <= set(arg):
        raise ConfigError(f"{where}: normal takes {{mean: ..., std: ..., min: ..., max: ..., size: ...}}, got {arg!r}")
    for k in ("mean", "std", "min", "max"):
        if arg.get(k) is not None and (not isinstance(arg[k], (int, float)) or isinstance(arg[k], bool)
                                       or not math.isfinite(arg[k])):
            raise ConfigError(f"{where}: normal {k} must be a finite number, got {arg[k]!r}")
    if arg["std"] <= 0:
        raise ConfigError(f"{where}: normal std must be > 0, got {arg['std']!r} (use choice: [value] for a constant)")
    lo, hi = arg.get("min"), arg.get("max")
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(f"{where}: normal min {lo!r} > max {hi!r}; swap them")
    nd = NormalDist(arg["mean"], arg["std"])
    mass = (nd.cdf(hi) if hi is not None else 1.0) - (nd.cdf(lo) if lo is not None else 0.0)
    if lo is not None and hi is not None and lo < hi and mass < 1e-12:
        raise ConfigError(f"{where}: [min, max] = [{lo}, {hi}] lies more than 7 std from the mean {arg['mean']}; "
                          "move the mean or widen the interval")
    out = {"mean": arg["mean"], "std": arg["std"], **_size_arg(where, arg)}
    out.update({k: arg[k] for k in ("min", "max") if arg.get(k) is not None})
    return out


def _choice(where: str, kind: str, arg) -> dict:
    if isinstance(arg, dict) and kind == "choice":
        if set(arg) - {"values", "weights"} or "values" not in arg:
            raise ConfigError(f"{where}: choice takes a list or {{values: [...], weights: [...]}}, got {arg!r}")
        values, weights = arg["values"], arg.get("weights")
    else:
        values, weights = arg, None
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: {kind} needs a non-empty list of values, got {values!r}")
    out = {"values": values}
    if weights is not None:
        w = np.asarray(_numeric(where, "weights", weights), float)
        if w.shape != (len(values),) or np.any(w < 0) or w.sum() <= 0:
            raise ConfigError(f"{where}: weights must be {len(values)} non-negative numbers with a positive sum, "
                              f"got {weights!r}")
        out["weights"] = (w / w.sum()).tolist()
    return out


# --- dotted paths ---------------------------------------------------------------------------------

def set_path(data: dict, path: str, value) -> None:
    """Set ``a.b.0.c`` in nested dicts/lists; numeric components index lists. Missing dict keys are created."""
    parts = path.split(".")
    node = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        here = ".".join(parts[:depth + 1])
        if isinstance(node, list):
            if not part.isdigit():
                raise ConfigError(f"vary.{path}: {'.'.join(parts[:depth]) or 'config'} is a list; "
                                  f"use a number for '{part}'")
            k = int(part)
            if k >= len(node):
                raise ConfigError(f"vary.{path}: {'.'.join(parts[:depth])} has {len(node)} entries in base, "
                                  f"no index {k}; add it to base first")
            if last:
                node[k] = value
            else:
                node = node[k]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"vary.{path}: {'.'.join(parts[:depth])} is {node!r} in base, not a section; "
                              f"cannot set '{here}'")


# --- seeds ----------------------------------------------------------------------------------------

def _path_key(path: str) -> int:
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "little")


def item_seed(dataset_seed: int, index: int) -> int:
    """The simulation seed (``config.seed``, drives shot noise) of item ``index``: 63 bits."""
    state = np.random.SeedSequence([dataset_seed, index, 0]).generate_state(2, np.uint32)
    return int((int(state[0]) << 32 | int(state[1])) >> 1)


def parameter_rng(dataset_seed: int, index: int, path: str) -> np.random.Generator:
    """Independent stream per (item, parameter): adding a vary entry leaves the others' values unchanged."""
    return np.random.default_rng(np.random.SeedSequence([dataset_seed, index, 1, _path_key(path)]))


# --- the spec -------------------------------------------------------------------------------------

@dataclass
class DatasetSpec:
    """A parsed, validated spec. ``base`` is the merged base config dict (paths as written)."""

    seed: int
    n_items: int
    base: dict
    vary: dict[str, Dist]
    outputs: list[str]
    store: str = "zarr"
    manifest: str = "csv"
    base_dir: Path = field(default_factory=Path.cwd)
    source: str = "spec"

    def normalised(self) -> dict:
        """Everything that determines the content of item i (n_items excluded: a store can grow)."""
        return {"layout": LAYOUT_VERSION, "seed": self.seed, "base": self.base,
                "vary": {k: v.canonical() for k, v in sorted(self.vary.items())},
                "outputs": sorted(self.outputs), "store": self.store}

    @property
    def fingerprint(self) -> str:
        blob = json.dumps(self.normalised(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {**self.normalised(), "n_items": self.n_items, "manifest": self.manifest}

    # item i --------------------------------------------------------------------------------------
    def item_params(self, index: int) -> dict:
        return {path: dist.sample(parameter_rng(self.seed, index, path), index) for path, dist in self.vary.items()}

    def item_config_dict(self, index: int, params: dict | None = None) -> dict:
        data = copy.deepcopy(self.base)
        for path, value in (self.item_params(index) if params is None else params).items():
            set_path(data, path, value)
        data["seed"] = item_seed(self.seed, index)
        return data

    def item_config(self, index: int) -> tuple[SimulationConfig, dict]:
        """Item ``index``'s validated config and the values sampled for it; errors name the item and the field."""
        self._check_index(index)
        params = self.item_params(index)
        data = self.item_config_dict(index, params)
        source = f"{self.source} item {index}"
        try:
            cfg = config_from_dict(data, source, self.base_dir)
        except ConfigError as exc:  # name the sampled values too (formatted only on failure: planning is hot)
            shown = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
            raise ConfigError(str(exc).replace(source, f"{source} ({shown})" if shown else source, 1)) from None
        return cfg, params

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.n_items:
            raise ConfigError(f"item index {index} is outside 0..{self.n_items - 1} (n_items = {self.n_items})")

    def check_support(self) -> None:
        """Every edge of every distribution must give a valid config on its own (the rest from base)."""
        config_from_dict({**copy.deepcopy(self.base), "seed": 0}, f"{self.source} base", self.base_dir)
        for path, dist in self.vary.items():
            for value in dist.support():
                data = copy.deepcopy(self.base)
                set_path(data, path, value)
                try:
                    SimulationConfig.model_validate(data)
                except ValidationError as exc:
                    if any(e["type"] == "extra_forbidden" for e in exc.errors()):
                        raise ConfigError(f"{self.source} vary.{path}: {path} is not a config field (unknown "
                                          "field; check spelling against the README's configuration)") from None
                    raise ConfigError(
                        f"{self.source} vary.{path}: the {dist.kind} distribution reaches {_short(value)}, which "
                        f"is invalid: {format_validation_error(exc, 'config').removeprefix('config: ')}; keep the "
                        "distribution inside the field's valid range") from None


def _short(v, limit: int = 60) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= limit else s[:limit - 3] + "..."


def _read_yaml(path: Path, what: str) -> dict:
    return read_yaml_mapping(path, what, "a mapping")


def _absolute_paths(cfg: dict, base: Path) -> dict:
    """Resolve a base_config file's relative structure / MTF paths against that file's folder."""
    cfg = copy.deepcopy(cfg)
    for p in (cfg.get("sample") or {}).get("particles") or []:
        s = p.get("structure") if isinstance(p, dict) else None
        if isinstance(s, str) and not s.startswith("builtin:") and not Path(s).is_absolute():
            p["structure"] = str((base / s).resolve())
    mtf = (cfg.get("detector") or {}).get("mtf")
    if isinstance(mtf, dict) and isinstance(mtf.get("star"), str) and not Path(mtf["star"]).is_absolute():
        mtf["star"] = str((base / mtf["star"]).resolve())
    return cfg


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def spec_from_dict(data: dict, source: str = "spec", base_dir: Path | None = None) -> DatasetSpec:
    """Validate a spec mapping (as read from YAML); relative paths resolve against ``base_dir``."""
    base_dir = Path(base_dir or Path.cwd()).resolve()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping (seed, n_items, base, vary, outputs, store)")
    try:
        model = SpecModel.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source).replace(
            "see `difftem simulate --help` or the README", "see docs/datasets.md")) from None
    base: dict = {}
    if model.base_config is not None:
        p = Path(model.base_config)
        p = p if p.is_absolute() else base_dir / p
        base = _absolute_paths(_read_yaml(p, "base_config"), p.parent)
    if model.base is not None:
        base = _merge(base, model.base)
    if "seed" in model.vary:
        raise ConfigError(f"{source}: vary.seed: item seeds derive from the dataset seed and the item index; "
                          "set the top-level seed instead")
    vary = {path: parse_distribution(path, d) for path, d in model.vary.items()}
    if len(set(model.outputs)) != len(model.outputs) or not model.outputs:
        raise ConfigError(f"{source}: outputs must list each of {list(OUTPUT_CHOICES)} at most once, "
                          f"and at least one; got {model.outputs}")
    spec = DatasetSpec(model.seed, model.n_items, base, vary, list(model.outputs), model.store, model.manifest,
                       base_dir, source)
    spec.check_support()
    return spec


def load_spec(spec: DatasetSpec | dict | str | Path) -> DatasetSpec:
    """A spec object, a mapping, or a YAML path (relative paths inside resolve against its folder)."""
    if isinstance(spec, DatasetSpec):
        return spec
    if isinstance(spec, dict):
        return spec_from_dict(spec)
    path = Path(spec)
    return spec_from_dict(_read_yaml(path, "dataset spec"), str(path), path.parent)


def validate_items(spec: DatasetSpec, indices) -> dict[int, tuple[dict, dict]]:
    """Sample and validate every selected item: {index: (config JSON dict, sampled params)}."""
    out = {}
    for i in indices:
        cfg, params = spec.item_config(i)
        extra = sorted(set(spec.outputs) - TILT_OUTPUTS)
        if getattr(cfg, "tilt_series", None) is not None and extra:
            raise ConfigError(f"{spec.source} outputs: item {i} is a tilt series, which stores "
                              f"{sorted(TILT_OUTPUTS)} only; remove {extra}")
        if "movie" in spec.outputs and getattr(cfg, "movie", None) is None:
            raise ConfigError(f"{spec.source} outputs: item {i} has no movie section (base or vary) to draw the "
                              "'movie' output's frames from; add one or remove 'movie'")
        out[i] = (cfg.model_dump(mode="json"), params)
    return out


def parse_only(text: str, n_items: int) -> list[int]:
    """``--only 17`` / ``3,5-8`` → sorted item indices, each checked against n_items."""
    out: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                if a > b:
                    raise ValueError
                out.update(range(a, b + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise ConfigError(f"--only: cannot read '{part}'; give indices like 17 or 3,5-8") from None
    bad = [i for i in out if not 0 <= i < n_items]
    if bad:
        raise ConfigError(f"--only: item {bad[0]} is outside 0..{n_items - 1} (the spec's n_items is {n_items})")
    return sorted(out)
