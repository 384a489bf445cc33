"""Load: many `fedguard client` processes against one `fedguard server` on loopback.

Every piece is the real thing: a federation CA, one `fedguard server` (SuperLink with
TLS and node authentication, fedguard's ServerApp) and N `fedguard client` processes
(SuperNode + warm ClientApp executor), each holding its IID share of digits and training
the logistic-regression model with DP-SGD, for R rounds, with secure aggregation on (the
default) and, if asked, off. Reported per setting:

- rounds completed and seconds per round (the server's own timing of each round);
- the server's memory: peak RSS and PSS of its process tree (launcher, SuperLink and
  the SuperExec + ServerApp it starts, ``flwr run``), sampled every second;
- the nodes' memory (PSS per node, idle and peak) and the machine's lowest MemAvailable;
- that every node's update was aggregated exactly once per round: ``metrics.jsonl``
  counts N updates and no refusal in every round, every node's receipt names the round,
  and every node's ledger holds exactly one committed entry per round.

Memory decides how many nodes one machine can hold: a node (its launcher, SuperNode,
SuperExec and the ClientApp each message forks, sharing one copy of flwr, torch and
Opacus) takes ``--node-mb`` when idle and ``--training-mb`` more while it trains, and
``--reserve-mb`` stay free for everything else. When ``--nodes`` do not fit in what the
machine has available, the benchmark says so and runs as many as fit; it also stops if
the memory available ever drops below the reserve while it runs. The report breaks a
node's memory down by process (mean PSS per node at the nodes' peak).

Each node runs single-threaded (``OMP_NUM_THREADS=1`` and the BLAS equivalents, unless
set): tens of nodes share a few cores, and a thread pool per node only adds contention.

    python -m benchmarks.bench_load --nodes 50 --rounds 3   # make bench-load

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from fedguard.deploy.demo import DemoLayout, fedguard_cmd, prepare_demo
from fedguard.deploy.procs import start, stop
from fedguard.errors import FedguardError
from fedguard.files import LEDGER_FILE

__all__ = ["LoadResult", "main", "run_load"]

MB = 1024  # /proc reports kB
_ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class BenchError(FedguardError):
    """The benchmark could not run as asked; the message says what to change."""


def nodes_that_fit(*, node_mb: float, training_mb: float, reserve_mb: float) -> int:
    """How many nodes the memory available now holds, all of them training at once."""
    return int((_available_mb() - reserve_mb) // (node_mb + training_mb))


@dataclass(frozen=True)
class LoadResult:
    secagg: bool
    nodes: int
    rounds_planned: int
    rounds_completed: int
    seconds_per_round: list[float]
    updates_per_round: list[int]
    refused_per_round: list[int]
    exactly_once: bool  # metrics, receipts and every ledger agree
    problems: list[str]
    startup_s: float  # server start to the first round's start
    wall_s: float
    server_peak_rss_mb: float
    server_peak_pss_mb: float
    node_idle_pss_mb: float  # mean per node, all nodes up, before round 1
    node_peak_pss_mb: float  # mean per node at the nodes' peak total
    node_peak_by_process_mb: dict[str, float]  # that peak's PSS by process, mean per node
    min_available_mb: float
    available_drop_per_node_mb: float  # MemAvailable at start minus before round 1, / nodes
    load_average: tuple[float, float, float]  # at the start: other work on the machine


# ---------------------------------------------------------------- memory


def _parents() -> dict[int, int]:
    """{pid: parent pid} of every process (cheap: one small file each)."""
    parents = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone
    return parents


def _tree(root: int, parents: dict[int, int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    todo, found = [root], []
    while todo:
        pid = todo.pop()
        if pid in parents:
            found.append(pid)
        todo += children.get(pid, [])
    return found


def _rss_pss_mb(pids: Sequence[int]) -> tuple[float, float]:
    """Summed RSS and PSS of ``pids`` (smaps_rollup: read only for the processes asked)."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile
    return rss / MB, pss / MB


# A node's processes by name (fedguard.deploy.flower names the forks it makes); the tree's
# root is `fedguard client`, the launcher.
_ROLES = {b"fg-supernode": "supernode", b"fg-superexec": "superexec", b"fg-clientapp": "clientapp"}


def _pss_by_role_mb(roots: Sequence[int], parents: dict[int, int]) -> dict[str, float]:
    """PSS of the node trees under ``roots``, summed by process role."""
    roles: dict[str, float] = {}
    for root in roots:
        for pid in _tree(root, parents):
            try:
                comm = Path(f"/proc/{pid}/comm").read_bytes().strip()
            except OSError:
                continue
            role = "launcher" if pid == root else _ROLES.get(comm, "other")
            roles[role] = roles.get(role, 0.0) + _rss_pss_mb([pid])[1]
    return roles


def _available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / MB
    raise BenchError("/proc/meminfo has no MemAvailable: cannot guard memory")


class MemorySampler:
    """Samples the server's and the nodes' process trees every ``interval`` s."""

    def __init__(self, server: int, interval: float = 1.0) -> None:
        self.server, self.interval = server, interval
        self.nodes: list[int] = []
        self.server_rss = self.server_pss = self.nodes_pss = 0.0
        self.nodes_at_peak = 0
        self.roles_at_peak: dict[str, float] = {}
        self.min_available = _available_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def nodes_pss_now(self) -> float:
        parents = _parents()
        return _rss_pss_mb([p for n in list(self.nodes) for p in _tree(n, parents)])[1]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            parents = _parents()
            rss, pss = _rss_pss_mb(_tree(self.server, parents))
            self.server_rss, self.server_pss = max(self.server_rss, rss), max(self.server_pss, pss)
            nodes = list(self.nodes)
            roles = _pss_by_role_mb(nodes, parents)
            pss = sum(roles.values())
            if pss > self.nodes_pss:
                self.nodes_pss, self.nodes_at_peak = pss, len(nodes)
                self.roles_at_peak = roles
            self.min_available = min(self.min_available, _available_mb())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------- one federation


def _pump(proc: subprocess.Popen[bytes], log: IO[str], expect: set[str]) -> threading.Event:
    """Copy ``proc``'s output to ``log``; the event is set once every ``expect`` line
    (as the start of a line) has been seen."""
    seen = threading.Event()

    def run() -> None:
        for raw in proc.stdout or ():
            line = raw.decode(errors="replace").rstrip()
            log.write(line + "\n")
            log.flush()
            expect.discard(line.split(" (")[0])
            if not expect:
                seen.set()

    threading.Thread(target=run, daemon=True).start()
    return seen


def _configure(layout: DemoLayout, *, secagg: bool, round_timeout: float) -> None:
    fed = layout.federation.read_text().replace(
        "round-timeout = 120.0", f"round-timeout = {round_timeout}"
    )
    if not secagg:
        fed = fed.replace("enabled = true", "enabled = false")
        for toml in layout.nodes:
            toml.write_text(toml.read_text().replace("required = true", "required = false"))
    layout.federation.write_text(fed)


def _check_exactly_once(layout: DemoLayout, rows: list[dict], nodes: int) -> list[str]:
    # Imported once the nodes are gone: fedguard.privacy brings torch (~300 MB).
    from fedguard.privacy.ledger import Ledger

    problems = []
    names = [t.parent.name for t in layout.nodes]
    for row in rows:
        r = row["round"]
        if row["clients"] != nodes or row["refused"] != 0:
            problems.append(f"round {r}: {row['clients']} updates, {row['refused']} refused")
        stale = [n for n in names if row["receipts"].get(n, {}).get("server_round") != r]
        if stale:
            problems.append(f"round {r}: no receipt for this round from {', '.join(stale)}")
    for toml in layout.nodes:
        ledger = Ledger(path=toml.parent / "state" / LEDGER_FILE)
        if not ledger.path.exists():
            problems.append(f"{toml.parent.name}: no ledger")
            continue
        entries = ledger.entries()
        committed = ledger.committed()
        done = [e.server_round for e in entries if e.kind == "pending" and e.hash in committed]
        open_ = [e.server_round for e in entries if e.kind == "pending" and e.hash not in committed]
        if done != [row["round"] for row in rows] or open_:
            problems.append(
                f"{toml.parent.name}: committed rounds {done}, uncommitted {open_} "
                f"(expected each of {[row['round'] for row in rows]} once)"
            )
    return problems


def run_load(
    *,
    out: Path,
    nodes: int,
    rounds: int,
    secagg: bool,
    reserve_mb: float = 1500.0,
    stagger_s: float = 0.3,
) -> LoadResult:
    """Run one federation of ``nodes`` client processes; see the module docstring.

    Stops (``BenchError``) if the memory available drops below ``reserve_mb``.
    """
    load = os.getloadavg()
    available_at_start = _available_mb()
    layout = prepare_demo(out=out, nodes=nodes, rounds=rounds)
    _configure(layout, secagg=secagg, round_timeout=max(300.0, 12.0 * nodes))
    env = dict(os.environ)
    node_env = {**{k: "1" for k in _ONE_THREAD}, **env}
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[IO[bytes]] = []
    started = time.monotonic()
    server_log = (out / "server.log").open("w")
    sampler: MemorySampler | None = None
    idle_pss = idle_drop = 0.0
    try:
        server = start(
            fedguard_cmd("server", "--config", str(layout.federation)),
            env=env,
            log=subprocess.PIPE,
        )
        procs.append(server)
        sampler = MemorySampler(server.pid)
        enrolled = _pump(server, server_log, {f"enrolled {t.parent.name}" for t in layout.nodes})
        if not enrolled.wait(timeout=60.0 + 3.0 * nodes):
            raise BenchError(f"the server did not enrol {nodes} nodes; see {out / 'server.log'}")
        for k, toml in enumerate(layout.nodes):
            if (available := _available_mb()) < reserve_mb:
                raise BenchError(
                    f"memory: {available:.0f} MB available with {k} of {nodes} nodes up, "
                    f"below the {reserve_mb:.0f} MB reserve; stopped (rerun with fewer --nodes)"
                )
            log = (toml.parent / "client.log").open("ab")
            logs.append(log)
            node = start(fedguard_cmd("client", "--config", str(toml)), env=node_env, log=log)
            procs.append(node)
            sampler.nodes.append(node.pid)
            time.sleep(stagger_s)
        metrics = layout.results / "metrics.jsonl"
        first_round = None
        deadline = time.monotonic() + 600.0 + 120.0 * rounds + 5.0 * nodes * rounds
        while server.poll() is None:
            if first_round is None and "secure aggregation:" in (out / "server.log").read_text():
                first_round = time.monotonic()  # announced just before round 1 starts
                idle_pss = sampler.nodes_pss_now() / nodes
                idle_drop = (available_at_start - _available_mb()) / nodes
            if time.monotonic() > deadline:
                raise BenchError(f"the federation did not finish in time; see {out}")
            if sampler.min_available < reserve_mb:
                raise BenchError(
                    f"memory: {sampler.min_available:.0f} MB available, below the "
                    f"{reserve_mb:.0f} MB reserve; stopped (rerun with fewer --nodes)"
                )
            time.sleep(0.5)
        wall = time.monotonic() - started
    finally:
        if sampler is not None:
            sampler.close()
        with ThreadPoolExecutor(max_workers=16) as pool:  # nodes stop at once, not in turn
            list(pool.map(lambda proc: stop(proc, grace=5), reversed(procs)))
        for fh in logs:
            fh.close()
        server_log.close()
    assert sampler is not None
    rows = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    problems = _check_exactly_once(layout, rows, nodes)
    if server.returncode != 0:
        problems.append(f"the server ended with status {server.returncode}; see server.log")
    return LoadResult(
        secagg=secagg,
        nodes=nodes,
        rounds_planned=rounds,
        rounds_completed=len(rows),
        seconds_per_round=[round(float(r["seconds"]), 2) for r in rows],
        updates_per_round=[int(r["clients"]) for r in rows],
        refused_per_round=[int(r["refused"]) for r in rows],
        exactly_once=not problems and len(rows) == rounds,
        problems=problems,
        startup_s=round((first_round or started) - started, 1),
        wall_s=round(wall, 1),
        server_peak_rss_mb=round(sampler.server_rss),
        server_peak_pss_mb=round(sampler.server_pss),
        node_idle_pss_mb=round(idle_pss),
        node_peak_pss_mb=round(sampler.nodes_pss / max(1, sampler.nodes_at_peak)),
        node_peak_by_process_mb={
            role: round(mb / max(1, sampler.nodes_at_peak), 1)
            for role, mb in sorted(sampler.roles_at_peak.items())
        },
        min_available_mb=round(sampler.min_available),
        available_drop_per_node_mb=round(idle_drop),
        load_average=(round(load[0], 2), round(load[1], 2), round(load[2], 2)),
    )


# ---------------------------------------------------------------- report


def table(results: Sequence[LoadResult]) -> str:
    lines = [
        "| secure aggregation | nodes | rounds done | s/round (each) | s/round (median) "
        "| updates per round | exactly once | server peak RSS / PSS MB | node PSS MB idle / "
        "peak | node peak PSS MB: launcher / SuperNode / SuperExec / ClientApp | lowest "
        "MemAvailable MB | start-up s | load average at start |",
        "|---|---:|---:|---|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        each = ", ".join(f"{s:.1f}" for s in r.seconds_per_round) or "-"
        median = statistics.median(r.seconds_per_round) if r.seconds_per_round else float("nan")
        by = r.node_peak_by_process_mb
        processes = " / ".join(
            f"{by.get(k, 0.0):.0f}" for k in ("launcher", "supernode", "superexec", "clientapp")
        )
        lines.append(
            f"| {'on' if r.secagg else 'off'} | {r.nodes} | {r.rounds_completed}/"
            f"{r.rounds_planned} | {each} | {median:.1f} | "
            f"{', '.join(map(str, r.updates_per_round)) or '-'} | "
            f"{'yes' if r.exactly_once else 'NO'} | {r.server_peak_rss_mb} / "
            f"{r.server_peak_pss_mb} | {r.node_idle_pss_mb} / {r.node_peak_pss_mb} | "
            f"{processes} | {r.min_available_mb:.0f} | {r.startup_s:.0f} | "
            f"{', '.join(f'{x:g}' for x in r.load_average)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=50, help="client processes")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--secagg", default="on", help="on, off or on,off")
    p.add_argument("--out", type=Path, default=Path("runs/bench-load"))
    # Measured (README, Load): ~350-370 MB a node idle, ~20-30 MB more while it trains.
    p.add_argument("--node-mb", type=float, default=370.0, help="one idle node's memory")
    p.add_argument("--training-mb", type=float, default=30.0, help="a node's training extra")
    p.add_argument("--reserve-mb", type=float, default=1500.0, help="kept free for others")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.secagg.split(",") if m.strip()]
    if not modes or set(modes) - {"on", "off"}:
        raise SystemExit(f"--secagg: expected on, off or on,off, got {args.secagg!r}")
    args.out.mkdir(parents=True, exist_ok=True)
    fit = nodes_that_fit(
        node_mb=args.node_mb, training_mb=args.training_mb, reserve_mb=args.reserve_mb
    )
    nodes = args.nodes
    if fit < nodes:
        print(
            f"{nodes} nodes do not fit: {_available_mb():.0f} MB available, each node takes "
            f"~{args.node_mb:.0f} MB idle + {args.training_mb:.0f} MB training and "
            f"{args.reserve_mb:.0f} MB stay free: running the largest that fits, {fit} nodes",
            flush=True,
        )
        nodes = fit
    if nodes < 2:
        raise SystemExit(f"bench-load: {nodes} nodes fit; a federation needs 2 or more")
    results = []
    for mode in modes:
        print(f"{nodes} nodes, {args.rounds} rounds, secure aggregation {mode} ...", flush=True)
        try:
            result = run_load(
                out=args.out / f"secagg-{mode}",
                nodes=nodes,
                rounds=args.rounds,
                secagg=mode == "on",
                reserve_mb=args.reserve_mb,
            )
        except BenchError as exc:
            raise SystemExit(f"bench-load: {exc}") from None
        results.append(result)
        print(json.dumps(asdict(result)), flush=True)
        for problem in result.problems:
            print(f"  problem: {problem}", flush=True)
    text = table(results)
    print(text, flush=True)
    (args.out / "bench_load.md").write_text(text + "\n")
    (args.out / "bench_load.json").write_text(
        json.dumps([asdict(r) for r in results], indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
