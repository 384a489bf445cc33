"""What secure aggregation costs: seconds per round and bytes per node, with and without.

Part 1 runs the in-process engine end to end (real DP-SGD training on digits, an MLP of
~10k or ~1M parameters, every client every round) without ``--secagg``, with it
(``--secagg-protocol sum``, the default: the exact sum without expanding masks) and with
every stage (``full``), and reports seconds per round (mean of rounds 2..R: round 1
includes warm-up) and the ratios to plain.

Part 2 runs the protocol alone on random updates and reports, per node, the protocol's
compute (key agreement, Shamir, quantisation, masks; training excluded) and the bytes it
sends and receives (serialised ``fedguard.v1`` messages), against a plain upload of the
float32 weights. Client compute should grow like k x model size (k neighbours), not
n x model size: the column ``ns/(k*P)`` stays flat when it does.

Part 3 is the consistency stage's share of part 2 (Bell et al. 2020; #14.6): each survivor
signs the survivor set (ECDSA P-384) and, before it unmasks, verifies every survivor's
signature; the messages are the survivor set, one signature up, and all signatures down.
Signing is timed inside the round; verification is timed on the very signatures of the
round (|U3| verifications per node, as ``SecAggClient.unmask`` does).

    python -m benchmarks.bench_secagg            # make bench-secagg
    python -m benchmarks.bench_secagg --quick    # a smoke run (CI-sized)
    python -m benchmarks.bench_secagg --protocol-only   # parts 2 and 3 only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedguard.config import load_simulation_config
from fedguard.files import METRICS_FILE
from fedguard.privacy.secagg import (
    ConsistencyReply,
    ConsistencyRequest,
    RoundCost,
    SecAggParams,
    UnmaskRequest,
    make_params,
    quorum,
    secure_sum_in_process,
)
from fedguard.privacy.secagg import _hazmat as hz
from fedguard.privacy.secagg.signing import consistency_message
from fedguard.simulations.runner import simulate
from fedguard.transport import encode_secagg

__all__ = ["MODELS", "bench_params", "main"]

# name -> MLP hidden width on digits (64 inputs, 10 classes): 74h + 10 parameters.
MODELS = {"10k": 128, "1M": 13_400}


@dataclass(frozen=True)
class RoundTiming:
    model: str
    params: int
    clients: int
    plain_s: float
    secagg_s: float  # --secagg-protocol sum (the default): the exact sum, masks not expanded
    full_s: float  # --secagg-protocol full: every stage


def _round_seconds(
    *, hidden: int, clients: int, rounds: int, secagg: bool, out: Path, protocol: str = "sum"
) -> float:
    cfg = load_simulation_config(
        overrides={
            "dataset": "digits",
            "model": "mlp",
            "hidden": hidden,
            "clients": clients,
            "rounds": rounds,
            "secagg": secagg,
            "secagg-protocol": protocol,
            "out": str(out),
        }
    )
    simulate(cfg, overwrite=True)
    rows = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    return statistics.mean(r["seconds"] for r in rows[1:] or rows)


def end_to_end(*, clients: Sequence[int], models: Sequence[str], rounds: int) -> list[RoundTiming]:
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-secagg-") as tmp:
        for name in models:
            hidden = MODELS[name]
            for n in clients:
                args: dict[str, Any] = {"hidden": hidden, "clients": n, "rounds": rounds}
                plain = _round_seconds(**args, secagg=False, out=Path(tmp) / "plain")
                secure = _round_seconds(**args, secagg=True, out=Path(tmp) / "secagg")
                full = _round_seconds(**args, secagg=True, out=Path(tmp) / "full", protocol="full")
                out.append(RoundTiming(name, 74 * hidden + 10, n, plain, secure, full))
                print(
                    f"  {name:>3} n={n:<4} plain {plain:7.3f} s/round  secagg sum {secure:7.3f} "
                    f"({secure / plain:5.2f}x)  full {full:7.3f} ({full / plain:5.2f}x)",
                    flush=True,
                )
    return out


@dataclass(frozen=True)
class ProtocolCost:
    params: int
    clients: int
    degree: int
    ring_bits: int
    client_ms: float  # per node
    server_ms: float
    up_bytes: float  # per node, all stages
    down_bytes: float  # per node, secure-aggregation messages only
    plain_up_bytes: int
    quorum: int  # signatures needed on the survivor set (c = 0)
    sign_ms: float  # per node: the consistency stage (checks and one signature)
    verify_ms: float  # per node: verifying every survivor's signature before unmasking
    consistency_up_bytes: float  # per node: its ConsistencyReply
    consistency_down_bytes: float  # per node: ConsistencyRequest + the signatures in unmask


def bench_params(*, clients: int, seed: int = 0) -> SecAggParams:
    """The session every protocol benchmark runs: 16 bits over [-1, 1], cap 50, 1/3."""
    return make_params(
        run="bench",
        server_round=1,
        cohort=clients,
        clip_range=1.0,
        bits=16,
        weight_cap=50,
        dropout_tolerance=1 / 3,
        graph_seed=seed,
    )


def protocol_cost(*, clients: int, params: int, seed: int = 0) -> ProtocolCost:
    p = bench_params(clients=clients, seed=seed)
    rng = np.random.default_rng(seed)
    update = [rng.normal(0.0, 0.05, params).astype(np.float32)]
    sent = {"up": 0, "down": 0, "cons-up": 0, "cons-down": 0}
    unmask: list[UnmaskRequest] = []

    def count(direction: str, _slot: int, message: object) -> None:
        size = len(encode_secagg(message))  # type: ignore[arg-type]
        sent[direction] += size
        if isinstance(message, ConsistencyRequest | ConsistencyReply):
            sent[f"cons-{direction}"] += size
        elif isinstance(message, UnmaskRequest):
            # What the signatures add to the unmask request (the set itself was sent before).
            bare = UnmaskRequest(survivors=message.survivors, signatures=())
            sent["cons-down"] += size - len(encode_secagg(bare))
            unmask.append(message)

    cost = RoundCost()
    secure_sum_in_process(
        params=p, input_for=lambda _s: (update, 50), rng=rng, on_message=count, cost=cost
    )
    verify_ms = _verify_ms(p, unmask[0])
    return ProtocolCost(
        params=params,
        clients=clients,
        degree=p.degree,
        ring_bits=p.ring_bits,
        client_ms=1000 * cost.client_seconds / clients,
        server_ms=1000 * cost.server_seconds,
        up_bytes=sent["up"] / clients,
        down_bytes=sent["down"] / clients,
        plain_up_bytes=4 * params,
        quorum=quorum(p),
        sign_ms=1000 * cost.consistency_client_seconds / clients,
        verify_ms=verify_ms,
        consistency_up_bytes=sent["cons-up"] / clients,
        consistency_down_bytes=sent["cons-down"] / clients,
    )


def _verify_ms(params: object, request: UnmaskRequest) -> float:
    """Milliseconds one node spends verifying ``len(request.signatures)`` signatures.

    The round's own keys stay inside ``secure_sum_in_process``; this re-signs the same
    survivor set with as many fresh P-384 keys and times the same ``verify`` calls (the
    cost of ECDSA verification does not depend on which key signed).
    """
    message = consistency_message(params, request.survivors)  # type: ignore[arg-type]
    keys = [hz.new_signing_key() for _ in request.signatures]
    signed = [
        (k.public_key(), hz.sign(k, label=hz.SIGN_CONSISTENCY, message=message)) for k in keys
    ]
    best = float("inf")
    for _ in range(3):  # the quickest of three: other load on the box only adds time
        start = time.perf_counter()
        for public, signature in signed:
            if not hz.verify(public, signature, label=hz.SIGN_CONSISTENCY, message=message):
                raise RuntimeError("a fresh signature did not verify")
        best = min(best, time.perf_counter() - start)
    return 1000 * best


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="10,50,100", help="cohort sizes, comma-separated")
    ap.add_argument("--models", default="10k,1M", help=f"among {', '.join(MODELS)}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="10k model, n=10 and 20, 2 rounds")
    ap.add_argument(
        "--protocol-only", action="store_true", help="skip part 1 (end-to-end training)"
    )
    ap.add_argument(
        "--large",
        action="store_true",
        help="add n = 1000 to part 2 (a sparse graph; each of the 1000 in-process nodes "
        "verifies ~1000 signatures: long)",
    )
    args = ap.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    models = args.models.split(",")
    if args.quick:
        clients, models, args.rounds = [10, 20], ["10k"], 2
    bad = sorted(set(models) - set(MODELS))
    if bad:
        print(f"--models: expected among {', '.join(MODELS)}, got {', '.join(bad)}")
        return 2

    if not args.protocol_only:
        print("1) seconds per round, in-process engine, DP-SGD on digits, every client every round")
        timings = end_to_end(clients=clients, models=models, rounds=args.rounds)
        print(
            "\n| model | params | n | plain s/round | secagg (sum) s/round | sum/plain "
            "| secagg (full) s/round | full/plain |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for t in timings:
            print(
                f"| {t.model} | {t.params:,} | {t.clients} | {t.plain_s:.3f} | {t.secagg_s:.3f} "
                f"| {t.secagg_s / t.plain_s:.2f} | {t.full_s:.3f} | {t.full_s / t.plain_s:.2f} |"
            )

    print("\n2) the protocol alone, per node (random updates; training excluded)")
    print(
        "\n| params | n | k | ring | client ms/node | ns/(k*P) | server ms | "
        "up bytes/node | plain up | up ratio | secagg down bytes/node |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    sizes = [(74 * MODELS[m] + 10, n) for m in models for n in clients]
    if args.large and not args.quick:
        sizes.append((74 * MODELS["10k"] + 10, 1000))  # k < n - 1 only for large cohorts
    costs = []
    for params, n in sizes:
        c = protocol_cost(clients=n, params=params)
        costs.append(c)
        per = 1e6 * c.client_ms / (max(c.degree, 1) * params)
        print(
            f"| {params:,} | {n} | {c.degree} | 2^{c.ring_bits} | {c.client_ms:.1f} | {per:.2f} "
            f"| {c.server_ms:.0f} | {c.up_bytes:,.0f} | {c.plain_up_bytes:,} "
            f"| {c.up_bytes / c.plain_up_bytes:.2f} | {c.down_bytes:,.0f} |",
            flush=True,
        )
    print("\n3) the consistency stage's share of part 2, per node (c = 0)")
    print(
        "\n| params | n | q | client ms/node (all stages) | sign ms | verify ms "
        "| consistency share of time | up bytes | of which consistency "
        "| down bytes | of which consistency |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in costs:
        spent = c.sign_ms + c.verify_ms
        total = c.client_ms  # every stage; unmask's verification included
        print(
            f"| {c.params:,} | {c.clients} | {c.quorum} | {total:.1f} | {c.sign_ms:.2f} "
            f"| {c.verify_ms:.1f} | {100 * spent / total:.1f}% | {c.up_bytes:,.0f} "
            f"| {c.consistency_up_bytes:,.0f} ({100 * c.consistency_up_bytes / c.up_bytes:.2f}%) "
            f"| {c.down_bytes:,.0f} | {c.consistency_down_bytes:,.0f} "
            f"({100 * c.consistency_down_bytes / c.down_bytes:.1f}%) |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
