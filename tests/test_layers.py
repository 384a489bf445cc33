"""Layer contracts, read from the source tree (ast), not from what happens to be imported.

The layers, bottom up. A module may import modules of its own layer and of the layers in
its "may import" column, nothing else; every module of the namespace is in exactly one
layer (a new module must be placed here). "Flower" says whether the layer may import
``flwr`` at all.

===========  ============================================  ==========================  ======
layer        modules                                       may import                  Flower
===========  ============================================  ==========================  ======
util         fedguard (package), errors, _io, _toml,      (standard library, numpy)   no
             _checks, _lazy, files, safetensors_header,
             console, class_labels
proto        fedguard.proto (generated protobuf)           (protobuf)                  no
privacy      fedguard.privacy (DP-SGD, accountants,        util                        no
             ledger, secagg)
task         fedguard.task (data, models, train loops)     util                        no
fl-rules     fedguard.fl's rules that need no more than    util                        no
             util: strategies, limits, seeds,
             participants (and the package itself)
config       fedguard.config (the simulation's config)     util, privacy, task,        no
                                                           fl-rules
fl           fedguard.fl: what a round means (run_rounds,  util, privacy, task,        no
             LocalTrainer, the dp-scaling release, a       fl-rules, config
             simulation's data and round-0 model)
transport    fedguard.transport: the message codec         util, proto, privacy,       yes
             (messages, records, serde, receipts), the     task, fl-rules, config, fl
             exchange with one reply vetting (grid), the
             reply poll loop (poll)
deploy       fedguard.deploy (certs, procs, roster, the    util, proto, privacy,       yes
             Flower adapter), deploy_config and its        task, fl-rules, config, fl,
             federation_config, node_config,               transport
             deploy_toml, task_identity, budget_report
client       fedguard.client (a deployed node)             every layer above but       yes
                                                           server, simulations
server       fedguard.server (the operator's ServerApp)    every layer above but       yes
                                                           client, simulations
simulations  fedguard.simulations (engines, sweeps, their  util, proto, privacy,       yes
             own Flower apps)                              task, fl-rules, config, fl,
                                                           transport
demo         fedguard.deploy.demo (``fedguard demo``)      util, privacy, config,      no
                                                           deploy, server
cli          fedguard.cli, fedguard.cli_*, __main__        every layer                 yes
===========  ============================================  ==========================  ======

Why console and class_labels are util: both import only the standard library (and the
util modules), and both serve layers far apart (console: the transport's and the server's
log lines, the launchers, the CLI; class_labels: the task's metrics and a node's label
file); any higher home would make task or transport climb to reach them.

Besides the direct imports, what a module *runs* is checked: nothing a simulation imports
reaches client, server, deploy, demo or cli code (so no deployment code runs in a
simulation), nothing the deployed ClientApp imports reaches a simulation module, and
privacy reaches nothing but util. Two more contracts, on the whole namespace:

1. No import cycle. Every import counts: at module level, inside a function, inside
   ``try/except ImportError`` (which hides a cycle only until the import order changes);
   only ``if TYPE_CHECKING:`` blocks, never run, are left out (``harness.imports``).
2. Only the Flower adapter (``fedguard.deploy.flower``) imports Flower's internals.
   Everything else uses Flower's public API, this allow-list:

   - ``flwr.app``, ``flwr.serverapp``, ``flwr.clientapp``: the app API;
   - ``flwr.simulation``: the simulation engine's entry (``run_simulation``);
   - ``flwr.common``, for the names in its ``__all__`` only (not its submodules).

   Tests are not product code and are not scanned: ``tests/deploy_flower`` checks the
   adapter against the private modules it patches, and other tests build Flower messages
   and protobufs (``flwr.proto``) to attack the apps with.

``PYTHONPATH=tests .venv/bin/python tests/test_layers.py`` prints how many imports go from
each layer to each other one.
"""

from __future__ import annotations

import collections
import fnmatch
from dataclasses import dataclass
from pathlib import Path

import flwr.common
from harness.imports import cycles, import_graph, imports_of, source_modules

ADAPTER = ("fedguard.deploy.flower",)
PUBLIC_FLOWER = ("flwr.app", "flwr.serverapp", "flwr.clientapp", "flwr.simulation")
_BELOW_APPS = (
    "util",
    "proto",
    "privacy",
    "task",
    "fl-rules",
    "config",
    "fl",
    "transport",
    "deploy",
)


@dataclass(frozen=True)
class Layer:
    name: str
    modules: tuple[str, ...]  # fnmatch patterns; "p" also matches p's submodules
    may_import: tuple[str, ...]
    flower: bool


_U = "fedguard."
LAYERS = (
    Layer(
        "util",
        (
            "fedguard",
            *(
                _U + m
                for m in ("errors", "_io", "_toml", "_checks", "_lazy", "files", "_record_reads")
            ),
        ),
        (),
        False,
    ),
    Layer(
        "util", tuple(_U + m for m in ("safetensors_header", "console", "class_labels")), (), False
    ),
    Layer("proto", ("fedguard.proto",), (), False),
    Layer("privacy", ("fedguard.privacy",), ("util",), False),
    Layer("task", ("fedguard.task",), ("util",), False),
    Layer(
        "fl-rules",
        # fedguard.fl itself (importing a submodule runs it) imports nothing.
        (
            "fedguard.fl",
            *(_U + "fl." + m for m in ("strategies", "limits", "seeds", "participants")),
        ),
        ("util",),
        False,
    ),
    Layer("config", ("fedguard.config",), ("util", "privacy", "task", "fl-rules"), False),
    Layer("fl", ("fedguard.fl.*",), ("util", "privacy", "task", "fl-rules", "config"), False),
    Layer(
        "transport",
        ("fedguard.transport",),
        _BELOW_APPS[:7],
        True,
    ),
    Layer(
        "demo", ("fedguard.deploy.demo",), ("util", "privacy", "config", "deploy", "server"), False
    ),
    Layer(
        "deploy",
        (
            "fedguard.deploy",
            "fedguard.deploy_config",
            "fedguard.federation_config",
            "fedguard.node_config",
            "fedguard.deploy_toml",
            "fedguard.task_identity",
            "fedguard.budget_report",
        ),
        _BELOW_APPS[:8],
        True,
    ),
    Layer("client", ("fedguard.client",), _BELOW_APPS, True),
    Layer("server", ("fedguard.server",), _BELOW_APPS, True),
    Layer("simulations", ("fedguard.simulations",), _BELOW_APPS[:8], True),
    Layer(
        "cli",
        ("fedguard.cli", "fedguard.cli_*", "fedguard.__main__"),
        (*_BELOW_APPS, "client", "server", "simulations", "demo"),
        True,
    ),
)
# What a layer may not run even through the layers it may import: layer -> layers kept
# from it ("client-app" is the deployed ClientApp, fedguard.client.app, alone).
UNREACHABLE = {
    "simulations": ("client", "server", "deploy", "demo", "cli"),
    "privacy": tuple(layer.name for layer in LAYERS if layer.name not in ("util", "privacy")),
    "client-app": ("simulations",),
}


def _matches(module: str, pattern: str) -> bool:
    if fnmatch.fnmatchcase(module, pattern):
        return True
    return "*" not in pattern and pattern != "fedguard" and module.startswith(pattern + ".")


def layer_of(module: str, layers: tuple[Layer, ...] = LAYERS) -> Layer | None:
    """The layer whose most specific pattern matches ``module`` (None: in no layer)."""
    found = [(len(p), layer) for layer in layers for p in layer.modules if _matches(module, p)]
    return max(found, key=lambda f: f[0])[1] if found else None


def layer_violations(modules: dict[str, Path], layers: tuple[Layer, ...] = LAYERS) -> list[str]:
    """Every import a layer may not make (and every module in no layer), one line each."""
    graph = import_graph(modules)
    bad = []
    for name, path in sorted(modules.items()):
        own = layer_of(name, layers)
        if own is None:
            bad.append(f"{name}: in no layer")
            continue
        for dep in sorted(graph[name]):
            target = layer_of(dep, layers)
            if target is not None and target.name not in (own.name, *own.may_import):
                bad.append(f"{name} ({own.name}) imports {dep} ({target.name})")
        if not own.flower:
            for target_name, _ in imports_of(name, path):
                if target_name == "flwr" or target_name.startswith("flwr."):
                    bad.append(f"{name} ({own.name}) imports {target_name}")
    return bad


def reach_violations(
    modules: dict[str, Path],
    rules: dict[str, tuple[str, ...]] = UNREACHABLE,
    layers: tuple[Layer, ...] = LAYERS,
) -> list[str]:
    """Every module a layer runs (imports, transitively) that ``rules`` keeps from it."""
    graph = import_graph(modules)

    def layer_name(module: str) -> str | None:
        layer = layer_of(module, layers)
        return None if layer is None else layer.name

    bad = []
    for rule, forbidden in sorted(rules.items()):
        if rule == "client-app":
            roots = [m for m in graph if m == "fedguard.client.app"]
        else:
            roots = [m for m in graph if layer_name(m) == rule]
        seen: dict[str, str] = {}
        stack = [(r, r) for r in roots]
        while stack:
            module, root = stack.pop()
            for dep in sorted(graph[module]):
                if dep not in seen:
                    seen[dep] = root
                    stack.append((dep, root))
        bad += [
            f"{rule}: {root} runs {dep} ({layer_name(dep)})"
            for dep, root in sorted(seen.items())
            if layer_name(dep) in forbidden
        ]
    return bad


def private_flower_imports(modules: dict[str, Path]) -> list[str]:
    """``module: flwr import`` for every import of Flower outside the allow-list."""
    public_common = set(flwr.common.__all__)
    bad = []
    for name, path in modules.items():
        if name.startswith(ADAPTER):
            continue
        for target, names in imports_of(name, path):
            if target != "flwr" and not target.startswith("flwr."):
                continue
            if target in PUBLIC_FLOWER:  # the facades themselves, not their submodules
                continue
            if target == "flwr.common" and names and set(names) <= public_common:
                continue
            bad.append(f"{name}: {target} {', '.join(names)}".rstrip())
    return bad


def test_the_scan_sees_the_tree():
    modules = source_modules()
    assert {"fedguard.cli", "fedguard.privacy", "fedguard.client.launcher"} <= set(modules)
    graph = import_graph(modules)
    assert "fedguard.errors" in graph["fedguard.deploy.flower.version"]
    # a lazy import inside a function counts, and its packages with it
    assert "fedguard.deploy.flower.entry" in graph["fedguard.client.launcher"]


def test_a_hidden_cycle_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import x\n")
    (pkg / "b.py").write_text(
        "x = 1\ndef f():\n    try:\n        from pkg.a import y\n    except ImportError:\n"
        "        pass\n"
    )
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import z\n"
    )
    graph = import_graph(source_modules({"pkg": pkg}))
    assert cycles(graph) == [["pkg.a", "pkg.b"]]  # pkg.c's import never runs


def test_no_import_cycle_among_fedguard_modules():
    assert cycles(import_graph(source_modules())) == []


def test_only_the_flower_adapter_imports_flower_internals():
    assert private_flower_imports(source_modules()) == []


def test_every_module_is_in_a_layer_and_imports_only_what_its_layer_may():
    assert layer_violations(source_modules()) == []


def test_nothing_a_simulation_or_the_deployed_client_app_runs_crosses_its_contract():
    assert reach_violations(source_modules()) == []


def _fake_tree(root: Path) -> dict[str, Path]:
    """A namespace laid out like fedguard's, with one violation of each contract."""
    files = {
        "fedguard/__init__.py": "",
        "fedguard/errors.py": "",
        "fedguard/stray.py": "",  # in no layer
        "fedguard/deploy/__init__.py": "",
        "fedguard/deploy/certs.py": "from fedguard.errors import x\n",
        "fedguard/fl/__init__.py": "",
        "fedguard/fl/loop.py": "",
        "fedguard/transport/__init__.py": "",
        "fedguard/transport/grid.py": "from fedguard.server.app import y\n",
        # privacy: Flower and the round layer, both lazily
        "privacy/__init__.py": "",
        "privacy/evil.py": "def f():\n    import flwr.app\n    from fedguard.fl.loop import run\n",
        # a simulation: deployment code behind try/except ImportError, server via transport
        "simulations/__init__.py": "",
        "simulations/engine.py": (
            "def f():\n    try:\n        from fedguard.deploy.certs import x\n"
            "    except ImportError:\n        pass\n"
        ),
        "simulations/apps.py": "from fedguard.transport import grid\n",
        "server/__init__.py": "",
        "server/app.py": "",
        "client/__init__.py": "",
        "client/app.py": "from fedguard.simulations.apps import grid\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    folders = {"fedguard": "fedguard", "fedguard.privacy": "privacy", "fedguard.client": "client"}
    folders |= {"fedguard.server": "server", "fedguard.simulations": "simulations"}
    return source_modules({package: root / f for package, f in folders.items()})


def test_the_layer_checks_fail_on_each_kind_of_violation(tmp_path):
    modules = _fake_tree(tmp_path)
    assert layer_violations(modules) == [
        "fedguard.client.app (client) imports fedguard.simulations (simulations)",
        "fedguard.client.app (client) imports fedguard.simulations.apps (simulations)",
        "fedguard.privacy.evil (privacy) imports fedguard.fl (fl-rules)",
        "fedguard.privacy.evil (privacy) imports fedguard.fl.loop (fl)",
        "fedguard.privacy.evil (privacy) imports flwr.app",
        "fedguard.simulations.engine (simulations) imports fedguard.deploy (deploy)",
        "fedguard.simulations.engine (simulations) imports fedguard.deploy.certs (deploy)",
        "fedguard.stray: in no layer",
        "fedguard.transport.grid (transport) imports fedguard.server (server)",
        "fedguard.transport.grid (transport) imports fedguard.server.app (server)",
    ]
    reached = reach_violations(modules)
    assert "client-app: fedguard.client.app runs fedguard.simulations.apps (simulations)" in reached
    assert "privacy: fedguard.privacy.evil runs fedguard.fl.loop (fl)" in reached
    # only through the transport module it may import, but a simulation still runs it
    assert any(r.startswith("simulations: ") and r.endswith("runs fedguard.server.app (server)")
               for r in reached)  # fmt: skip
    assert "simulations: fedguard.simulations.engine runs fedguard.deploy.certs (deploy)" in reached


def layer_counts(modules: dict[str, Path]) -> dict[tuple[str, str], int]:
    """(from layer, to layer) -> number of module imports between them (others' layers)."""
    graph = import_graph(modules)
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for name, deps in graph.items():
        own = layer_of(name)
        for dep in deps:
            target = layer_of(dep)
            if own and target and own.name != target.name:
                counts[(own.name, target.name)] += 1
    return dict(counts)


if __name__ == "__main__":
    for (src, dst), n in sorted(layer_counts(source_modules()).items()):
        print(f"{src:12s} -> {dst:12s} {n:3d}")
