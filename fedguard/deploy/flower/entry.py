"""``python -m fedguard.deploy.flower {supernode|superexec|plain-superexec|superlink} ARGS``.

Flower's own ``flower-supernode``, ``flower-superexec`` and ``flower-superlink`` with
fedguard's workarounds applied (``ARGS`` are theirs). The SuperNode applies
``defer-sql``, ``supernode-poll``, ``payload-backoff``, ``heartbeat-retry``,
``heartbeat-interval`` and ``warm-clientapp`` (with its executor zygote), unless
``FEDGUARD_SUPERNODE_PATCHES`` names fewer (comma-separated from
``poll,backoff,warm,heartbeat,nosql``; empty: none), and refuses to start without the
app-bundle check its launcher installs. The SuperLink applies ``sqlite-busy-timeout``,
``fleet-message-cap`` (``--fedguard-max-message-bytes N``) and ``plain-superexec``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Sequence

from fedguard.deploy.flower import bundle_check
from fedguard.deploy.flower._process import set_process_name
from fedguard.deploy.flower.env import PATCHES_ENV, UNSAFE_ANY_BUNDLE_ENV
from fedguard.deploy.flower.executor_zygote import ExecutorZygote
from fedguard.deploy.flower.fleet_message_cap import MAX_MESSAGE_FLAG
from fedguard.deploy.flower.plain_logs import plain_console
from fedguard.deploy.flower.registry import apply_all
from fedguard.deploy.flower.superexec_fork import preload_executor
from fedguard.deploy.flower.supernode_poll import SUPERNODE_MODULE
from fedguard.deploy.flower.version import check_flower_version
from fedguard.deploy.flower.warm_clientapp import SuperExecRedirect
from fedguard.errors import FedguardError, invalid

__all__ = [
    "main",
    "plain_superexec_main",
    "preload_supernode",
    "superexec_main",
    "superlink_main",
    "supernode_main",
]

SUPERNODE_SELECTION = {
    "poll": ("supernode-poll",),
    "backoff": ("payload-backoff",),
    "warm": ("warm-clientapp",),
    "heartbeat": ("heartbeat-retry", "heartbeat-interval"),
    "nosql": ("defer-sql",),
}
"""What each name in ``FEDGUARD_SUPERNODE_PATCHES`` selects (registry names)."""

# What Flower 1.39's SuperNode imports only once it runs: its Runtime API app and the
# uvicorn server it runs in (uvloop, httptools and websockets when installed, as uvicorn's
# "auto" settings pick them), and the gRPC channel.
_SUPERNODE_LATE_IMPORTS = (
    "flwr.supernode.main",
    "uvicorn.lifespan.on",
    "uvicorn.loops.auto",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.auto",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.auto",
    "uvicorn.protocols.websockets.websockets_impl",
    "anyio._backends._asyncio",
    "grpc._channel",
    "grpc.experimental",
)


def wanted_patches() -> set[str]:
    """The names in ``FEDGUARD_SUPERNODE_PATCHES`` (all when it is unset)."""
    given = os.environ.get(PATCHES_ENV, ",".join(SUPERNODE_SELECTION))
    wanted = {p.strip() for p in given.split(",")}
    wanted.discard("")
    if unknown := wanted - set(SUPERNODE_SELECTION):
        raise FedguardError(
            f"{PATCHES_ENV}: expected names from {','.join(SUPERNODE_SELECTION)}, "
            f"got {sorted(unknown)}"
        )
    return wanted


def preload_supernode() -> None:
    """Import what :func:`supernode_main` runs, and with ``warm`` what its executor runs.

    For a launcher that forks the SuperNode (``fedguard.deploy.procs.fork_start``) rather than
    starting an interpreter: the launcher, the SuperNode, its SuperExec and every
    ClientApp then share one copy of these modules. Reads ``FEDGUARD_SUPERNODE_PATCHES``
    and ``FEDGUARD_CLIENTAPP_PRELOAD`` (set them first: Flower reads some settings at
    import time).
    """
    check_flower_version()
    wanted = wanted_patches()
    if "nosql" in wanted:
        apply_all(SUPERNODE_SELECTION["nosql"])
    from flwr.supernode.cli import flower_supernode  # noqa: F401

    for name in (SUPERNODE_MODULE, *_SUPERNODE_LATE_IMPORTS):
        with contextlib.suppress(ImportError):  # uvicorn's optional speed-ups
            importlib.import_module(name)
    if "warm" in wanted:
        preload_executor()
        # The SuperExec and every ClientApp open a Runtime API client: httpx builds an SSL
        # context even for plain HTTP, and OpenSSL's first one costs each process ~6 MB
        # (measured) unless initialised here, once, before the forks.
        import httpx

        httpx.Client(verify=False).close()  # noqa: S501 - never connects; Flower's own is so


def supernode_main(argv: list[str] | None = None) -> None:
    """Run Flower's ``flower-supernode`` with ``argv`` and the workarounds applied.

    The app-bundle check must have been installed (the node's launcher does it): without
    it the SuperNode would import whatever code a server sends, so it refuses.
    """
    check_flower_version()
    wanted = wanted_patches()
    if not bundle_check.installed():
        raise FedguardError(
            "no app-bundle check installed: a SuperNode would run code the server sends; "
            "start nodes with `fedguard client`"
        )
    set_process_name(b"fg-supernode")
    # nosql first: the others import Flower. warm last: it forks, after every import.
    for name in ("nosql", "poll", "backoff", "heartbeat"):
        if name in wanted:
            apply_all(SUPERNODE_SELECTION[name])
    # Imported before the fork below: a module imported after it would be private to the
    # process that imports it, and copy the shared pages its objects land in.
    preload_supernode()
    from flwr.supernode.cli import flower_supernode

    if "warm" in wanted:
        apply_all(SUPERNODE_SELECTION["warm"])
        SuperExecRedirect.zygote = ExecutorZygote.fork(run=superexec_main)

    sys.argv = ["flower-supernode", *(sys.argv[1:] if argv is None else argv)]
    flower_supernode()


def superexec_main(argv: list[str] | None = None) -> None:
    """``flower-superexec`` whose ClientApp tasks run in forks of a pre-imported process."""
    check_flower_version()
    from flwr.supercore.cli import flower_superexec

    if "nosql" in wanted_patches():  # as the SuperNode that starts it
        apply_all(SUPERNODE_SELECTION["nosql"])
    preload_executor()
    # payload-backoff: the node announces a task before its payload is in.
    apply_all(["payload-backoff", "superexec-fork"])
    sys.argv = ["flower-superexec", *(sys.argv[1:] if argv is None else argv)]
    flower_superexec()


def superlink_main(argv: list[str] | None = None) -> None:
    """Run Flower's ``flower-superlink`` with ``argv``: SQLite waits, the Fleet API's
    message cap (``--fedguard-max-message-bytes N``), plain SuperExec logs."""
    check_flower_version()
    apply_all(["sqlite-busy-timeout"])
    from flwr.superlink.cli import flower_superlink

    from fedguard.console import is_verbose

    args = list(sys.argv[1:] if argv is None else argv)
    if MAX_MESSAGE_FLAG in args:
        at = args.index(MAX_MESSAGE_FLAG)
        value = args[at + 1] if at + 1 < len(args) else ""
        if not value.isdigit() or int(value) <= 0:
            raise invalid(MAX_MESSAGE_FLAG, allowed="a number of bytes > 0", got=value)
        del args[at : at + 2]
        apply_all(["fleet-message-cap"], options={"fleet-message-cap": {"limit": int(value)}})
    sys.argv = ["flower-superlink", *args]
    # Its log is a file (superlink.log), shared with the SuperExec it starts: plain text,
    # colours only with --verbose (#17.8).
    plain_console(colored=is_verbose())
    apply_all(["plain-superexec"])
    flower_superlink()


def plain_superexec_main(argv: list[str] | None = None) -> None:
    """Flower's own ``flower-superexec`` (the SuperLink's, for ServerApps), plain logs."""
    check_flower_version()
    from flwr.supercore.cli import flower_superexec

    from fedguard.console import is_verbose

    plain_console(colored=is_verbose())
    sys.argv = ["flower-superexec", *(sys.argv[1:] if argv is None else argv)]
    flower_superexec()


def main(argv: Sequence[str]) -> None:
    """Dispatch ``python -m fedguard.deploy.flower COMMAND ARGS``; a FedguardError exits 1
    with its one line."""
    commands = {
        "supernode": supernode_main,
        "superexec": superexec_main,
        "plain-superexec": plain_superexec_main,
        "superlink": superlink_main,
    }
    if not argv or argv[0] not in commands:
        sys.exit(
            f"usage: python -m fedguard.deploy.flower {{{'|'.join(commands)}}} ARGS...\n"
            "  ARGS are those of flower-supernode / flower-superexec / flower-superlink"
        )
    try:
        if argv[0] == "supernode" and os.environ.get(UNSAFE_ANY_BUNDLE_ENV) == "1":
            # Benchmarks of Flower's own transport run their own app: never a node's setting.
            print(f"WARNING: {UNSAFE_ANY_BUNDLE_ENV}=1: this SuperNode runs any app bundle")
            apply_all(
                ["bundle-check"],
                options={"bundle-check": {"check_bundle": lambda _content, _run_id: None}},
            )
        commands[argv[0]](list(argv[1:]))
    except FedguardError as err:
        sys.exit(f"fedguard: {err}")
