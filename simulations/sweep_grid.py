"""A sweep file and its grid: parsing, validation and expansion into cells.

A sweep file is a simulation config (:mod:`fedguard.config`) in which the grid keys may be
lists: ``epsilon`` (a number > 0, or ``inf`` / ``"non-private"`` for a run without DP),
``seed``, ``partition``, ``alpha`` (the Dirichlet concentrations; only ``dirichlet``
expands over them) and ``clients-per-round``. Every combination is one cell, simulated into
its own folder under ``OUT/runs/``. The whole grid (keys, values, data sets, partitions)
is checked here, before anything is written or run. Import it from
:mod:`fedguard.simulations.sweep`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedguard._toml import read_toml
from fedguard.config import SimulationConfig, load_simulation_config
from fedguard.errors import DataError, FedguardError, invalid
from fedguard.fl.data import federated_data
from fedguard.task.partition import PARTITION_SCHEMES

__all__ = [
    "DEFAULT_OUT",
    "GRID_KEYS",
    "NON_PRIVATE",
    "RUNS_DIR",
    "Cell",
    "SweepPlan",
    "format_number",
    "load_sweep",
    "plan_sweep",
]

GRID_KEYS: tuple[str, ...] = ("epsilon", "seed", "partition", "alpha", "clients-per-round")
"""Keys that may hold a list of values; every other key is one simulation setting."""

NON_PRIVATE: tuple[str, ...] = ("inf", "non-private")
"""How a sweep file names a run without DP in ``epsilon`` (TOML's ``inf`` works too)."""

DEFAULT_OUT = Path("runs/sweep")
RUNS_DIR = "runs"
_EPSILON_ALLOWED = 'numbers > 0, or inf / "non-private" (no DP)'
_DEFAULTS = SimulationConfig()


@dataclass(frozen=True, kw_only=True)
class Cell:
    """One point of the grid and the simulation that measures it."""

    name: str
    epsilon: float  # math.inf: no DP
    seed: int
    partition: str
    alpha: float | None  # None unless partition is dirichlet
    config: SimulationConfig

    @property
    def private(self) -> bool:
        return math.isfinite(self.epsilon)

    @property
    def partitioning(self) -> str:
        """``iid``, ``shards`` or ``dirichlet alpha=0.5``: the plot's line label."""
        if self.alpha is None:
            return self.partition
        return f"{self.partition} alpha={format_number(self.alpha)}"

    @property
    def clients_per_round(self) -> int:
        return self.config.cohort_size


@dataclass(frozen=True, kw_only=True)
class SweepPlan:
    """A validated grid: every cell's configuration, in the order they run."""

    source: Path | None
    out: Path
    axes: dict[str, list[Any]]
    settings: dict[str, Any]  # the keys that are not grid axes, as given
    cells: tuple[Cell, ...]


def load_sweep(*, path: Path, out: Path | None = None) -> SweepPlan:
    """Read and validate a sweep file; ``out`` (``--out``) overrides its ``out`` key."""
    return plan_sweep(settings=read_toml(path), out=out, source=path)


def plan_sweep(
    *, settings: Mapping[str, Any], out: Path | None = None, source: Path | None = None
) -> SweepPlan:
    """Expand ``settings`` (sweep-file keys) into cells and validate every one of them.

    Raises ``ConfigError`` (or ``DataError`` for an unusable data set) naming the file, the
    key, what is allowed and the value received.
    """
    base: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            raise invalid(key, allowed="a value (tables are not used)", got=value, source=source)
        if key == "no-dp":
            allowed = f'epsilon = [..., "{NON_PRIVATE[1]}"] instead'
            raise invalid(key, allowed=allowed, got=value, source=source)
        if isinstance(value, list) and key not in GRID_KEYS:
            allowed = f"a single value (only {', '.join(GRID_KEYS)} take lists)"
            raise invalid(key, allowed=allowed, got=value, source=source)
        if key not in GRID_KEYS:
            base[key] = value
    if out is None:
        given = base.pop("out", None)
        if given is not None and not isinstance(given, str):
            raise invalid("out", allowed="a folder path", got=given, source=source)
        out = DEFAULT_OUT if given is None else Path(given)
    else:
        base.pop("out", None)
    axes = _axes(settings, source=source)
    cells = _cells(axes, base, out=out, source=source)
    checked: set[tuple[Any, ...]] = set()
    for cell in cells:
        c = cell.config
        data_key = (c.dataset, c.target, c.seed, c.clients, c.partition, c.alpha)
        if data_key in checked:
            continue
        checked.add(data_key)
        try:
            federated_data(c)  # the data set loads and the partition is possible
        except DataError as exc:
            raise _in_file(DataError(f"dataset: {exc}"), source) from None
        except FedguardError as exc:
            raise _in_file(exc, source) from None
    return SweepPlan(source=source, out=out, axes=axes, settings=base, cells=tuple(cells))


# --- the grid -------------------------------------------------------------------------


def _axes(settings: Mapping[str, Any], *, source: Path | None) -> dict[str, list[Any]]:
    def values(key: str, default: Any) -> list[Any]:
        raw = settings.get(key, default)
        listed = raw if isinstance(raw, list) else [raw]
        if not listed:
            raise invalid(key, allowed="a value or a non-empty list", got=raw, source=source)
        return listed

    def check(key: str, items: list[Any], ok: Any, allowed: str) -> None:
        for item in items:
            if not ok(item):
                raise invalid(key, allowed=allowed, got=item, source=source)
        seen: set[Any] = set()
        for item in items:
            if item in seen:
                raise invalid(key, allowed="distinct values", got=items, source=source)
            seen.add(item)

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    epsilon = [math.inf if v in NON_PRIVATE else v for v in values("epsilon", _DEFAULTS.epsilon)]
    check("epsilon", epsilon, lambda v: number(v) and v > 0 and not math.isnan(v), _EPSILON_ALLOWED)
    seed = values("seed", _DEFAULTS.seed)
    check("seed", seed, lambda v: count(v) and v >= 0, "integers >= 0")
    partition = values("partition", _DEFAULTS.partition)
    check(
        "partition",
        partition,
        lambda v: v in PARTITION_SCHEMES,
        "one of " + ", ".join(PARTITION_SCHEMES),
    )
    alpha = values("alpha", _DEFAULTS.alpha)
    check("alpha", alpha, lambda v: number(v) and 0 < v < math.inf, "finite numbers > 0")
    if len(alpha) > 1 and "dirichlet" not in partition:
        raise invalid(
            "alpha", allowed="one value unless partition lists dirichlet", got=alpha, source=source
        )
    cohort = values("clients-per-round", _DEFAULTS.clients_per_round)
    check(
        "clients-per-round", cohort, lambda v: v is None or (count(v) and v >= 1), "integers >= 1"
    )
    return {
        "epsilon": [float(v) for v in epsilon],
        "seed": seed,
        "partition": partition,
        "alpha": [float(v) for v in alpha],
        "clients-per-round": cohort,
    }


def _cells(
    axes: dict[str, list[Any]], base: dict[str, Any], *, out: Path, source: Path | None
) -> list[Cell]:
    partitionings = [
        (scheme, alpha)
        for scheme in axes["partition"]
        for alpha in (axes["alpha"] if scheme == "dirichlet" else [None])
    ]
    cells: list[Cell] = []
    # Seeds outermost: the first seed's full curve is there early in a long sweep.
    for seed, (scheme, alpha), cohort, eps in itertools.product(
        axes["seed"], partitionings, axes["clients-per-round"], axes["epsilon"]
    ):
        overrides = dict(base, seed=seed, partition=scheme)
        overrides["clients-per-round"] = cohort
        if alpha is not None:
            overrides["alpha"] = alpha
        if math.isfinite(eps):
            overrides["epsilon"] = eps
        else:
            overrides["no-dp"] = True
        probe = _config(overrides, source=source)
        name = "_".join(
            (
                f"eps-{format_number(eps)}",
                scheme if alpha is None else f"{scheme}-{format_number(alpha)}",
                f"cpr-{probe.cohort_size}",
                f"seed-{seed}",
            )
        )
        config = probe.replace(out=out / RUNS_DIR / name)
        cells.append(
            Cell(name=name, epsilon=eps, seed=seed, partition=scheme, alpha=alpha, config=config)
        )
    if len({c.name for c in cells}) != len(cells):  # two cohorts of the same size
        cohort = axes["clients-per-round"]
        raise invalid("clients-per-round", allowed="distinct sizes", got=cohort, source=source)
    return cells


def _config(overrides: dict[str, Any], *, source: Path | None) -> SimulationConfig:
    try:
        return load_simulation_config(overrides=overrides)
    except FedguardError as exc:
        raise _in_file(exc, source) from None


def _in_file(exc: FedguardError, source: Path | None) -> FedguardError:
    if source is None or str(exc).startswith(f"{source}:"):
        return exc
    return type(exc)(f"{source}: {exc}")


def format_number(value: float) -> str:
    """Shortest exact text of a number, for folder names: 3.0 -> 3, 0.5 -> 0.5."""
    if math.isinf(value):
        return "inf"
    text = repr(float(value))
    return text.removesuffix(".0")
