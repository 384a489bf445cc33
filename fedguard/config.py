"""Typed, validated configuration for simulations.

Options and TOML keys share one name (``--clients-per-round`` is ``clients-per-round`` in
the file), so a config file is the command line written down. Every error names the file
(when there is one), the key, what is allowed and the value received.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from fedguard._checks import coerce
from fedguard._toml import read_toml
from fedguard.errors import ConfigError, invalid
from fedguard.fl.strategies import STRATEGIES

__all__ = [
    "ACCOUNTANTS",
    "DEVICES",
    "ENGINES",
    "SimulationConfig",
    "load_simulation_config",
    "option_name",
    "resolve_device",
]


class Engine(StrEnum):
    INPROCESS = "inprocess"
    FLOWER = "flower"
    RAY = "ray"  # the in-process engine's cohort sharded over Ray workers


ENGINES: tuple[str, ...] = tuple(e.value for e in Engine)
ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")
DEVICES: tuple[str, ...] = ("cpu", "cuda", "auto")
"""``--device``: ``auto`` is ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``."""
VECTORIZE: tuple[str, ...] = ("auto", "on", "off")
"""``--vectorize``: batch a round's DP clients (``auto``: where it can; ``on``: or refuse)."""
SECAGG_PROTOCOLS: tuple[str, ...] = ("sum", "full")
"""``--secagg-protocol``: ``sum``, the exact secure sum without expanding masks (they cancel
mod 2^k: bit-identical, privacy/secagg/maskfree.py); ``full``, every SecAgg+ stage, to
study the protocol and its cost."""


@dataclass(frozen=True, kw_only=True)
class SimulationConfig:
    """One federated simulation: task, federation shape, local training and privacy.

    Defaults are the demo's: digits, 10 clients, epsilon 3 at delta 1e-5 per client.
    Tuned on a grid (model, batch, lr, clipping norm, rounds, server momentum; 3 seeds):
    logistic regression with a small clipping norm and many cheap rounds was the most
    accurate at this budget (0.883-0.923 over seeds 0-2, ~5 s on 2 cores, with public
    per-pixel constants and the per-record holdout; 0.886-0.906 with the per-node
    standardisation it replaced); the MLP's extra parameters cost more noise than they
    earn on 8x8 digits.
    """

    dataset: str = "digits"
    target: str | None = None
    schema: Path | None = None  # declared feature schema of a CSV/Parquet --dataset
    model: str = "logreg"
    hidden: int = 128  # width of the mlp's hidden layer
    # A user task "package.module:attribute" (fedguard.task.api); None: the built-in model
    # on the built-in data set or file that dataset names.
    task: str | None = None
    fix_model: bool = False  # let Opacus's ModuleValidator.fix replace BatchNorm and co.
    clients: int = 10
    clients_per_round: int | None = None  # None: every client, every round
    rounds: int = 60
    local_epochs: int = 1
    batch_size: int = 64
    lr: float = 0.5
    momentum: float = 0.0
    strategy: str = "fedavgm"  # FedAvgM with server_momentum 0 is plain FedAvg
    server_lr: float = 1.0
    server_momentum: float = 0.0  # fedavgm only
    prox_mu: float = 0.01  # fedprox only
    epsilon: float = 3.0
    delta: float = 1e-5
    no_dp: bool = False
    max_grad_norm: float = 0.5
    accountant: str = "rdp"
    partition: str = "iid"
    alpha: float = 0.5
    seed: int = 0
    engine: str = "inprocess"
    threads: int = 1
    device: str = "cpu"  # in-process engine: where the model, data and DP noise live
    # In-process engine, DP without secure aggregation: train a round's clients together,
    # vectorised (fedguard.privacy.cohort), with the same mechanism and random numbers as
    # one at a time. auto: every model it can batch (all built-in ones; a round of 700
    # CNN clients 5x faster here), the others one at a time; on: refuses those.
    vectorize: str = "auto"
    # --engine ray: the Ray workers a round's cohort is sharded over, and the Ray cluster
    # to join ("auto", "ray://head:10001"; None: start a local one on this machine).
    workers: int = 1
    ray_address: str | None = None
    client_cpus: float = 1.0  # --engine flower: Ray's num_cpus per virtual client
    client_gpus: float = 0.0  # --engine flower: Ray's num_gpus per virtual client
    secagg: bool = False  # in-process SecAgg+: the same protocol code as a deployment
    secagg_clip_range: float = 1.0
    secagg_bits: int = 16
    secagg_dropout_tolerance: float = 1 / 3
    secagg_protocol: str = "sum"  # one of SECAGG_PROTOCOLS
    client_dp: bool = False  # client-level DP with distributed noise (needs secagg)
    client_clip: float = 1.0  # L2 clip of each client's round update
    client_noise: float = 1.0  # noise multiplier of the summed updates
    # Public per-class loss weights, e.g. "0.031,1" (fedguard.privacy.class_weights): each
    # in (0, 1], applied before clipping, so epsilon is unchanged. Never derive them from
    # the clients' label counts; a declared prevalence p gives min(p) / p_c.
    class_weights: str | None = None
    out: Path = field(default_factory=lambda: Path("runs/latest"))

    def __post_init__(self) -> None:
        _validate(self, source=None)

    @property
    def class_weight_values(self) -> tuple[float, ...]:
        """``class-weights`` as numbers; () when not set."""
        return _parse_class_weights(self.class_weights, source=None)

    @property
    def cohort_size(self) -> int:
        return self.clients if self.clients_per_round is None else self.clients_per_round

    def replace(self, **changes: Any) -> SimulationConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with option names as keys (for summary.json and the Flower apps)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[option_name(f.name)] = str(value) if isinstance(value, Path) else value
        return out


def resolve_device(device: str) -> str:
    """The torch device a ``--device`` value means here: ``auto`` is ``cuda`` when torch
    sees a CUDA device, else ``cpu``; ``cpu`` and ``cuda`` are themselves."""
    if device not in DEVICES:
        raise invalid("--device", allowed=DEVICES, got=device)
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def option_name(field_name: str) -> str:
    """``clients_per_round`` -> ``clients-per-round`` (the option and TOML key)."""
    return field_name.replace("_", "-")


_FIELDS = {option_name(f.name): f for f in dataclasses.fields(SimulationConfig)}


def load_simulation_config(
    *, path: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> SimulationConfig:
    """Read ``path`` (TOML, keys as the options), then apply ``overrides`` (option names).

    Options given on the command line override the file. Raises ``ConfigError``.
    """
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read_toml(path))
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    source: Path | None = path
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        f = _FIELDS.get(key)
        if f is None:
            raise invalid(
                key, allowed="a known key: " + ", ".join(sorted(_FIELDS)), got=key, source=source
            )
        kwargs[f.name] = coerce(key, value, f.type, source=source)
    try:
        return SimulationConfig(**kwargs)
    except ConfigError as exc:
        if source is not None and not str(exc).startswith(str(source)):
            raise ConfigError(f"{source}: {exc}") from None
        raise


def _read_toml(path: Path) -> dict[str, Any]:
    data = read_toml(path)
    for key, value in data.items():
        if isinstance(value, dict):
            raise invalid(key, allowed="a value (tables are not used)", got=value, source=path)
    return data


def _validate(cfg: SimulationConfig, *, source: Path | None) -> None:
    def need(ok: bool, key: str, allowed: str | tuple[str, ...], got: object) -> None:
        if not ok:
            raise invalid(key, allowed=allowed, got=got, source=source)

    def positive_int(key: str, value: object, low: int = 1) -> None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        need(ok, key, f"an integer >= {low}", value)

    def positive_float(
        key: str,
        value: object,
        *,
        upper: float = math.inf,
        strict_upper: bool = False,
        allow_zero: bool = False,
    ) -> None:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            v = float(value)  # type: ignore[arg-type]
            ok = (
                math.isfinite(v)
                and (v >= 0 if allow_zero else v > 0)
                and (v < upper if strict_upper else v <= upper)
            )
        low = ">= 0" if allow_zero else "> 0"
        high = "" if upper == math.inf else f" and {'<' if strict_upper else '<='} {upper:g}"
        need(ok, key, f"a finite number {low}{high}", value)

    need(cfg.accountant in ACCOUNTANTS, "--accountant", ACCOUNTANTS, cfg.accountant)
    need(cfg.engine in ENGINES, "--engine", ENGINES, cfg.engine)
    need(cfg.strategy in STRATEGIES, "--strategy", STRATEGIES, cfg.strategy)
    need(cfg.vectorize in VECTORIZE, "--vectorize", VECTORIZE, cfg.vectorize)
    positive_int("--clients", cfg.clients)
    if cfg.clients_per_round is not None:
        positive_int("--clients-per-round", cfg.clients_per_round)
        need(
            cfg.clients_per_round <= cfg.clients,
            "--clients-per-round",
            f"an integer between 1 and --clients ({cfg.clients})",
            cfg.clients_per_round,
        )
    positive_int("--hidden", cfg.hidden)
    positive_int("--rounds", cfg.rounds)
    positive_int("--local-epochs", cfg.local_epochs)
    positive_int("--batch-size", cfg.batch_size)
    positive_int("--threads", cfg.threads)
    _validate_workers(cfg, need)
    positive_int("--seed", cfg.seed, low=0)
    positive_float("--lr", cfg.lr)
    positive_float("--momentum", cfg.momentum, upper=1.0, strict_upper=True, allow_zero=True)
    positive_float("--server-lr", cfg.server_lr)
    positive_float("--prox-mu", cfg.prox_mu, allow_zero=True)
    positive_float(
        "--server-momentum", cfg.server_momentum, upper=1.0, strict_upper=True, allow_zero=True
    )
    positive_float("--epsilon", cfg.epsilon)
    positive_float("--delta", cfg.delta, upper=1.0, strict_upper=True)
    positive_float("--max-grad-norm", cfg.max_grad_norm)
    positive_float("--alpha", cfg.alpha)
    _validate_resources(cfg, need)
    _validate_secagg(cfg, need)
    if cfg.class_weights is not None:
        _parse_class_weights(cfg.class_weights, source=source)
    # Imported here, after the checks that need nothing: the registries live with the code
    # they name (one source of truth), and fedguard.task imports torch (seconds, #17.8).
    from fedguard.task.model_names import MODEL_NAMES
    from fedguard.task.partition import PARTITION_SCHEMES

    need(cfg.model in MODEL_NAMES, "--model", MODEL_NAMES, cfg.model)
    if cfg.task is not None:
        from fedguard.task.api import SPEC_FORMAT, is_task_spec

        need(is_task_spec(cfg.task), "--task", SPEC_FORMAT, cfg.task)
    need(cfg.partition in PARTITION_SCHEMES, "--partition", PARTITION_SCHEMES, cfg.partition)
    if cfg.client_dp:
        need(
            cfg.secagg, "--client-dp", "--secagg as well (each client adds its noise share)", False
        )
        c, z = cfg.client_clip, cfg.client_noise
        need(math.isfinite(c) and c > 0, "--client-clip", "a finite number > 0", c)
        need(math.isfinite(z) and z > 0, "--client-noise", "a finite number > 0", z)


def _parse_class_weights(text: str | None, *, source: Path | None) -> tuple[float, ...]:
    if text is None:
        return ()
    from fedguard.privacy.class_weights import check_class_weights

    allowed = "comma-separated weights, one per class, each in (0, 1] (e.g. 0.05,1)"
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        raise invalid("--class-weights", allowed=allowed, got=text, source=source) from None
    try:
        return check_class_weights(values, key="--class-weights")
    except ConfigError as exc:
        raise invalid("--class-weights", allowed=allowed, got=text, source=source) from exc


def _validate_resources(cfg: SimulationConfig, need: Any) -> None:
    """``--device`` and the Flower engine's per-client Ray resources."""
    need(cfg.device in DEVICES, "--device", DEVICES, cfg.device)
    if cfg.device == "cuda":
        import torch

        need(
            torch.cuda.is_available(),
            "--device",
            "cpu or auto on this machine (torch sees no CUDA device)",
            cfg.device,
        )
    need(
        cfg.device != "cuda" or cfg.engine != Engine.FLOWER,
        "--device",
        "cpu or auto with --engine flower (its ClientApp trains on the CPU; --client-gpus "
        "reserves GPUs for clients)",
        cfg.device,
    )
    for key, value, low in (
        ("--client-cpus", cfg.client_cpus, "> 0"),
        ("--client-gpus", cfg.client_gpus, ">= 0"),
    ):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            v = float(value)
            ok = math.isfinite(v) and (v > 0 if low == "> 0" else v >= 0)
            ok = ok and (v <= 1 or v.is_integer())  # Ray: fractions of one unit, or whole units
        need(ok, key, f"a number {low}: a fraction <= 1 or a whole number", value)
    if cfg.engine != Engine.FLOWER:
        return
    cpus = os.cpu_count() or 1
    need(
        cfg.client_cpus <= cpus,
        "--client-cpus",
        f"at most the {cpus} CPU(s) of this machine (Ray would never schedule a client)",
        cfg.client_cpus,
    )
    if cfg.client_gpus > 0:
        import torch

        need(
            torch.cuda.device_count() > 0,
            "--client-gpus",
            "0 on this machine (torch sees no CUDA device; Ray would never schedule a client)",
            cfg.client_gpus,
        )
        need(
            cfg.client_gpus <= torch.cuda.device_count(),
            "--client-gpus",
            f"at most the {torch.cuda.device_count()} GPU(s) torch sees",
            cfg.client_gpus,
        )


def _validate_workers(cfg: SimulationConfig, need: Any) -> None:
    """``--workers`` and ``--ray-address``: options of ``--engine ray`` only."""
    is_int = isinstance(cfg.workers, int) and not isinstance(cfg.workers, bool)
    need(is_int and cfg.workers >= 1, "--workers", "an integer >= 1", cfg.workers)
    if cfg.engine != Engine.RAY:
        need(cfg.workers == 1, "--workers", "1 unless --engine ray", cfg.workers)
        need(cfg.ray_address is None, "--ray-address", "unset unless --engine ray", cfg.ray_address)
        return
    need(
        cfg.workers <= cfg.cohort_size,
        "--workers",
        f"at most --clients-per-round ({cfg.cohort_size}): each worker trains a slice",
        cfg.workers,
    )
    address = cfg.ray_address
    need(
        address is None or (isinstance(address, str) and address.strip() != ""),
        "--ray-address",
        'a Ray cluster address ("auto", "ray://head:10001") or unset',
        address,
    )


def _validate_secagg(cfg: SimulationConfig, need: Any) -> None:
    if not cfg.secagg:
        return
    need(
        cfg.engine != Engine.RAY,
        "--engine",
        "inprocess with --secagg (secure aggregation over Ray workers: not yet)",
        cfg.engine,
    )
    need(
        cfg.engine == Engine.INPROCESS,
        "--engine",
        "inprocess with --secagg (a deployment runs it over Flower: fedguard server/client)",
        cfg.engine,
    )
    need(cfg.cohort_size >= 2, "--clients-per-round", "at least 2 with --secagg", cfg.cohort_size)
    bits = cfg.secagg_bits
    ok = isinstance(bits, int) and not isinstance(bits, bool) and 1 <= bits <= 30
    need(ok, "--secagg-bits", "an integer in [1, 30]", bits)
    c = cfg.secagg_clip_range
    need(math.isfinite(c) and c > 0, "--secagg-clip-range", "a finite number > 0", c)
    tol = cfg.secagg_dropout_tolerance
    need(1 / 3 <= tol < 0.5, "--secagg-dropout-tolerance", "a fraction in [1/3, 1/2)", tol)
    protocol = cfg.secagg_protocol
    need(protocol in SECAGG_PROTOCOLS, "--secagg-protocol", SECAGG_PROTOCOLS, protocol)
