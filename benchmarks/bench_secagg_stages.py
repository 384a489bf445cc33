"""Where a deployed node's and the server's secure-aggregation time goes, stage by stage.

Each party's work is what it does in a deployment: the same :class:`SecAggClient` and
:class:`SecAggServer` methods, and every message serialised by its sender
(``fedguard.v1`` protobuf, :func:`fedguard.transport.encode_secagg`) and parsed by its
receiver, timed apart. Nodes run one after another here; in a deployment they run in
parallel, so a round's protocol time is about one node's column plus the server's.

Next to it, one node's training time for the same model: one round of the local DP-SGD
code every node runs (:class:`fedguard.fl.local.LocalTrainer` via the in-process engine,
one client at a time), on its share of digits (1,437 training examples over n nodes).

    python -m benchmarks.bench_secagg_stages            # make bench-secagg-stages
    python -m benchmarks.bench_secagg_stages --quick    # n = 10 only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_secagg import MODELS, bench_params
from fedguard.config import load_simulation_config
from fedguard.files import METRICS_FILE
from fedguard.privacy.secagg import (
    AdvertiseKeys,
    ConsistencyReply,
    ConsistencyRequest,
    MaskedInputReply,
    MaskedInputRequest,
    SecAggClient,
    SecAggServer,
    ShareKeysReply,
    ShareKeysRequest,
    UnmaskReply,
    UnmaskRequest,
    quantize,
)
from fedguard.privacy.secagg import _hazmat as hz
from fedguard.simulations.runner import simulate
from fedguard.transport import decode_secagg, encode_secagg

__all__ = ["main", "stage_times"]

NODE_STAGES = ("advertise", "share keys", "quantise", "mask", "consistency", "unmask")
SERVER_STAGES = ("route keys", "route shares", "add inputs", "survivor set", "unmask")


def stage_times(*, clients: int, params: int, seed: int = 0) -> dict[str, Any]:
    """Milliseconds per stage: per node (mean over nodes) and for the server, plus the
    serialisation (encode + parse) each side does."""
    p = dataclasses.replace(
        bench_params(clients=clients, seed=seed),
        names=tuple(f"node-{s}" for s in range(1, clients + 1)),
    )
    rng = np.random.default_rng(seed)
    update = [rng.normal(0.0, 0.05, params).astype(np.float32)]
    node_ms: dict[str, float] = defaultdict(float)
    server_ms: dict[str, float] = defaultdict(float)
    clock = time.perf_counter

    def timed(book: dict[str, float], stage: str, fn: Callable[[], Any]) -> Any:
        start = clock()
        out = fn()
        book[stage] += 1000 * (clock() - start)
        return out

    def wire(
        message: Any, kind: type, *, sender: dict[str, float], receiver: dict[str, float]
    ) -> Any:
        """Serialise on the sender's clock, parse on the receiver's (as deployed)."""
        data = timed(sender, "serialise", lambda: encode_secagg(message))
        return timed(receiver, "serialise", lambda: decode_secagg(data, expect=kind))

    keys = {name: hz.new_signing_key() for name in p.names}
    roster = {name: key.public_key() for name, key in keys.items()}
    nodes = {
        s: SecAggClient.create(params=p, slot=s, signing_key=keys[p.names[s - 1]], roster=roster)
        for s in range(1, clients + 1)
    }
    server = SecAggServer(p, length=params + 1)
    sink: dict[str, float] = defaultdict(float)  # the server's parse time is counted once

    adverts = []
    for node in nodes.values():
        advert = timed(node_ms, "advertise", node.advertise)
        adverts.append(wire(advert, AdvertiseKeys, sender=node_ms, receiver=server_ms))
    share_requests = timed(server_ms, "route keys", lambda: server.receive_keys(adverts))
    replies = []
    for slot, request in share_requests.items():
        got = wire(request, ShareKeysRequest, sender=server_ms, receiver=node_ms)
        reply = timed(node_ms, "share keys", partial(nodes[slot].share_keys, got))
        replies.append(wire(reply, ShareKeysReply, sender=node_ms, receiver=server_ms))
    mask_requests = timed(server_ms, "route shares", lambda: server.receive_shares(replies))
    for slot, request in mask_requests.items():
        got = wire(request, MaskedInputRequest, sender=server_ms, receiver=node_ms)
        # quantise alone, then the whole masked input: the difference is the masking
        timed(
            sink,
            "quantise",
            lambda: quantize(
                update, weight=50, clip_range=p.clip_range, bits=p.bits, dtype=p.dtype, rng=rng
            ),
        )
        reply = timed(
            node_ms,
            "mask",
            partial(nodes[slot].masked_input, got, update=update, weight=50, rng=rng),
        )
        masked = wire(reply, MaskedInputReply, sender=node_ms, receiver=server_ms)
        timed(server_ms, "add inputs", partial(server.add_masked_input, masked))
    node_ms["quantise"] = sink["quantise"]
    node_ms["mask"] -= sink["quantise"]
    consistency = timed(server_ms, "survivor set", server.consistency_requests)
    signatures = []
    for slot, request in consistency.items():
        got = wire(request, ConsistencyRequest, sender=server_ms, receiver=node_ms)
        reply = timed(node_ms, "consistency", partial(nodes[slot].consistency, got))
        signatures.append(wire(reply, ConsistencyReply, sender=node_ms, receiver=server_ms))
    unmask_requests = timed(
        server_ms, "survivor set", lambda: server.receive_consistency(signatures)
    )
    reveals = []
    for slot, request in unmask_requests.items():
        got = wire(request, UnmaskRequest, sender=server_ms, receiver=node_ms)
        reply = timed(node_ms, "unmask", partial(nodes[slot].unmask, got))
        reveals.append(wire(reply, UnmaskReply, sender=node_ms, receiver=server_ms))
    timed(server_ms, "unmask", lambda: server.receive_unmask(reveals))
    per_node = {k: v / clients for k, v in node_ms.items()}
    return {
        "clients": clients,
        "params": params,
        "degree": p.degree,
        "ring_bits": p.ring_bits,
        "node_ms": per_node,
        "node_total_ms": sum(per_node.values()),
        "server_ms": dict(server_ms),
        "server_total_ms": sum(server_ms.values()),
    }


def training_ms(*, hidden: int, clients: int) -> float:
    """One node's local DP round (ms): the in-process engine one client at a time,
    round 2 of 2 (round 1 includes warm-up), divided by the cohort."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_simulation_config(
            overrides={
                "dataset": "digits",
                "model": "mlp",
                "hidden": hidden,
                "clients": clients,
                "rounds": 2,
                "vectorize": "off",
                "out": tmp,
            }
        )
        simulate(cfg)
        rows = [json.loads(line) for line in (Path(tmp) / METRICS_FILE).read_text().splitlines()]
        seconds = [r["seconds"] for r in rows if "seconds" in r]
    return 1000 * seconds[-1] / clients


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| params | n | k | node ms: " + " / ".join(NODE_STAGES) + " / serialise | node total "
        "| node training ms | server ms: " + " / ".join(SERVER_STAGES) + " / serialise "
        "| server total |"
    )
    out = [head, "|" + "---:|" * 8]
    for r in rows:
        node = " / ".join(f"{r['node_ms'].get(s, 0):.1f}" for s in (*NODE_STAGES, "serialise"))
        srv = " / ".join(f"{r['server_ms'].get(s, 0):.1f}" for s in (*SERVER_STAGES, "serialise"))
        out.append(
            f"| {r['params']:,} | {r['clients']} | {r['degree']} | {node} | "
            f"{r['node_total_ms']:.1f} | {r['training_ms']:.0f} | {srv} | "
            f"{r['server_total_ms']:.1f} |"
        )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="10,50,100", help="cohort sizes, comma-separated")
    ap.add_argument("--models", default="1M", help=f"among {', '.join(MODELS)}")
    ap.add_argument("--quick", action="store_true", help="10k model, n = 10")
    args = ap.parse_args(argv)
    clients = [10] if args.quick else [int(c) for c in args.clients.split(",")]
    models = ["10k"] if args.quick else args.models.split(",")
    rows = []
    for model in models:
        hidden = MODELS[model]
        for n in clients:
            row = stage_times(clients=n, params=74 * hidden + 10)
            row["training_ms"] = training_ms(hidden=hidden, clients=n)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
