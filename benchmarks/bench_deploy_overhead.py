"""Seconds per round of a real Flower deployment with trivial work: stock vs patched.

Starts a SuperLink (TLS + SuperNode auth) and N SuperNodes on loopback, runs a ServerApp
that sends one tiny ``train`` message per node per round, and reports the time each
round's send-and-receive took. Each configuration adds one fix on top of the previous:

    stock   flower-supernode, grid.send_and_receive (3 s poll)
    grid    + fedguard.transport.poll.send_and_receive (0.05 s poll)
    env     + FAST_POLL_ENV (SuperExec task poll)
    poll    + SuperNode idle poll capped: python -m fedguard.deploy.flower supernode
              with FEDGUARD_SUPERNODE_PATCHES=poll
    backoff + payload pull back-off 0.05 s in the ServerApp and the SuperNode (=poll,backoff)
    warm    + ClientApp forked from a pre-imported SuperExec (all patches: the default)

and, to see what each fix is worth once the others are in, ``-X``: all fixes but X (X one
of grid, env, poll, backoff), e.g. ``--configs=warm,-poll,-env``.

    python -m benchmarks.bench_deploy_overhead --nodes 3 --rounds 5

Not part of the product; tests/benchmarks/test_bench_deploy_overhead.py runs ``Deployment``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from fedguard.deploy.certs import init_federation, make_node_keys
from fedguard.deploy.flower import FAST_POLL_ENV, PATCHES_ENV, UNSAFE_ANY_BUNDLE_ENV, flower_env
from fedguard.deploy.procs import free_port, start, stop, venv_tool, wait_for_port

__all__ = ["ABLATIONS", "CONFIGS", "Deployment", "main"]

CONFIGS = ("stock", "grid", "env", "poll", "backoff", "warm")
ABLATIONS = ("-grid", "-env", "-poll", "-backoff")
# per config: ServerApp mode (0 Flower's send_and_receive, 1 fedguard's, 2 + payload
# back-off patch), FAST_POLL_ENV on?, SuperNode command (None: flower-supernode) patches
_SETUP: dict[str, tuple[int, bool, str | None]] = {
    "stock": (0, False, None),
    "grid": (1, False, None),
    "env": (1, True, None),
    "poll": (1, True, "poll"),
    "backoff": (2, True, "poll,backoff"),
    "warm": (2, True, "poll,backoff,warm"),
    "-grid": (0, True, "poll,backoff,warm"),
    "-env": (2, False, "poll,backoff,warm"),
    "-poll": (2, True, "backoff,warm"),
    "-backoff": (1, True, "poll,warm"),
}
CONNECTION = "bench"
HOST = "127.0.0.1"

_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "benchapp"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedguard"

[tool.flwr.app.components]
serverapp = "benchapp.apps:server"
clientapp = "benchapp.apps:client"

[tool.flwr.app.config]
rounds = 3
nodes = 2
fast = 0
out = ""
"""

_APP = '''\
"""Trivial app: one tiny message per node per round; writes the round times as JSON."""

import json
import time
from pathlib import Path

from flwr.app import Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

server = ServerApp()
client = ClientApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    out = Path(str(cfg["out"]))
    deadline = time.monotonic() + 120
    while len(list(grid.get_node_ids())) < int(cfg["nodes"]):
        if time.monotonic() > deadline:
            raise RuntimeError("nodes did not come online")
        time.sleep(0.1)
    nodes = sorted(grid.get_node_ids())
    fast = int(cfg["fast"])  # 0: stock, 1: own send_and_receive, 2: + payload back-off
    if fast:
        from fedguard.deploy.flower import patch_object_pull_backoff
        from fedguard.transport.poll import send_and_receive
    if fast > 1:
        patch_object_pull_backoff()
    times, lag_in, lag_out = [], [], []
    for r in range(int(cfg["rounds"])):
        msgs = [
            Message(RecordDict({"m": MetricRecord({"x": r})}), dst_node_id=n,
                    message_type=MessageType.TRAIN, group_id=str(r))
            for n in nodes
        ]
        t, wall = time.monotonic(), time.time()
        if fast:
            replies = send_and_receive(grid, msgs, timeout=120)
        else:
            replies = list(grid.send_and_receive(msgs, timeout=120))
        times.append(time.monotonic() - t)
        ok = [m for m in replies if m.has_content() and m.content["m"]["y"] == r + 1]
        if len(ok) != len(nodes):
            raise RuntimeError(f"round {r}: {len(ok)} good replies of {len(nodes)}")
        # when the last ClientApp started / how long after the last one ended we had it
        lag_in.append(max(m.content["m"]["t0"] for m in ok) - wall)
        lag_out.append(wall + times[-1] - max(m.content["m"]["t1"] for m in ok))
        out.write_text(json.dumps({"times": times, "in": lag_in, "out": lag_out}))


@client.train()
def train(msg: Message, context: Context) -> Message:
    t0 = time.time()
    y = msg.content["m"]["x"] + 1
    return Message(
        RecordDict({"m": MetricRecord({"y": y, "t0": t0, "t1": time.time()})}), reply_to=msg
    )
'''


class Deployment:
    """SuperLink + ``nodes`` SuperNodes under ``work``, stopped on exit (even on error).

    ``config`` is one of :data:`CONFIGS`; every process is started in its own process
    group and stopped SIGTERM-then-SIGKILL with its children.
    """

    def __init__(self, work: Path, *, nodes: int, config: str, python: str = sys.executable):
        if config not in _SETUP:
            raise ValueError(f"config: expected one of {', '.join(_SETUP)}, got {config!r}")
        self.work, self.nodes, self.config, self.python = work, nodes, config, python
        self.procs: list[subprocess.Popen[bytes]] = []
        self.lags: list[tuple[float, float]] = []  # per round: (last start, reply lag)
        self.server_mode, fast_env, self.patches = _SETUP[config]
        self.env = flower_env(work / "flwrhome")
        for key in FAST_POLL_ENV:
            self.env.pop(key, None)
        if fast_env:
            self.env.update(FAST_POLL_ENV)
        if self.patches is not None:
            self.env[PATCHES_ENV] = self.patches
            self.env[UNSAFE_ANY_BUNDLE_ENV] = "1"  # the bench's own app, not fedguard's

    def __enter__(self) -> Deployment:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop(proc, grace=5)

    def _start(self) -> None:
        w = self.work
        (w / "flwrhome").mkdir(parents=True, exist_ok=True)
        certs = init_federation(out=w / "certs")
        control, fleet = free_port(), free_port()
        (w / "flwrhome" / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{HOST}:{control}"\nroot-certificates = "{certs.ca_cert}"\n'
        )
        link = self._spawn(
            "superlink",
            [venv_tool("flower-superlink"), "--ssl-ca-certfile", str(certs.ca_cert),
             "--ssl-certfile", str(certs.server_cert), "--ssl-keyfile", str(certs.server_key),
             "--enable-supernode-auth", "--disable-runtime-dependency-installation",
             "--host", HOST, "--port", str(control), "--fleet-api-type", "grpc-rere",
             "--fleet-api-address", f"{HOST}:{fleet}", "--database", str(w / "state.db")],
        )  # fmt: skip
        wait_for_port(HOST, control, timeout=60, alive=link)
        wait_for_port(HOST, fleet, timeout=60, alive=link)
        for i in range(1, self.nodes + 1):
            keys = make_node_keys(name=f"n{i}", out=w / "keys")
            self._flwr(["supernode", "register", str(keys.public_key), CONNECTION])
            cmd = (
                [self.python, "-m", "fedguard.deploy.flower", "supernode"]
                if self.patches is not None
                else [venv_tool("flower-supernode")]
            )
            self._spawn(
                f"supernode{i}",
                [*cmd, "--root-certificates", str(certs.ca_cert), "--superlink",
                 f"{HOST}:{fleet}", "--grpc-rere", "--auth-supernode-private-key",
                 str(keys.private_key), "--port", str(free_port()), "--node-config", "who=1"],
            )  # fmt: skip

    def _spawn(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        with (self.work / f"{name}.log").open("ab") as log:
            proc = start(args, env=self.env, log=log, cwd=self.work)
        self.procs.append(proc)
        return proc

    def _flwr(self, args: Sequence[str], *, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            res = subprocess.run(
                [venv_tool("flwr"), *args], env=self.env, cwd=self.work,
                capture_output=True, text=True, timeout=timeout,
            )  # fmt: skip
            if res.returncode == 0:
                return res.stdout
            if time.monotonic() > deadline:
                raise RuntimeError(f"flwr {' '.join(args)} failed: {res.stdout}{res.stderr}")
            time.sleep(0.5)

    def run(self, *, rounds: int, timeout: float = 300) -> list[float]:
        """Run the trivial app; return the seconds each round took (raises on failure)."""
        app = self.work / "app"
        (app / "benchapp").mkdir(parents=True, exist_ok=True)
        (app / "pyproject.toml").write_text(_PYPROJECT)
        (app / "benchapp" / "__init__.py").write_text("")
        (app / "benchapp" / "apps.py").write_text(_APP)
        out = self.work / f"rounds-{time.monotonic_ns()}.json"
        cfg = f'rounds={rounds} nodes={self.nodes} fast={self.server_mode} out="{out}"'
        with (self.work / "flwr-run.log").open("ab") as log:
            proc = start([venv_tool("flwr"), "run", ".", CONNECTION, "--stream", "-c", cfg],
                         env=self.env, log=log, cwd=app)  # fmt: skip
            try:
                proc.wait(timeout=timeout)
            finally:
                stop(proc, grace=5)
        result = json.loads(out.read_text()) if out.exists() else {"times": []}
        if len(result["times"]) != rounds:
            raise RuntimeError(f"{len(result['times'])} of {rounds} rounds ran; see {self.work}")
        self.lags = list(zip(result["in"], result["out"], strict=True))
        return [float(t) for t in result["times"]]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: temp)")
    args = parser.parse_args(argv)
    print(f"{args.nodes} nodes, {args.rounds} rounds; seconds per round (first round apart)")
    for config in args.configs.split(","):
        with tempfile.TemporaryDirectory(prefix=f"bench-{config}-") as tmp:
            work = (args.keep / config) if args.keep else Path(tmp)
            with Deployment(work, nodes=args.nodes, config=config) as dep:
                times = dep.run(rounds=args.rounds)
        rest = times[1:] or times
        lag_in = statistics.mean(i for i, _ in dep.lags[1:] or dep.lags)
        lag_out = statistics.mean(o for _, o in dep.lags[1:] or dep.lags)
        print(
            f"{config:6s} mean {statistics.mean(rest):5.2f}  median {statistics.median(rest):5.2f}"
            f"  first {times[0]:5.2f}  [push->last ClientApp start {lag_in:4.2f},"
            f" last reply->ServerApp {lag_out:4.2f}]  all {' '.join(f'{t:.2f}' for t in times)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
