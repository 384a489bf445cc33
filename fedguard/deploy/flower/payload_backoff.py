"""Workaround 3: a payload not uploaded yet is asked for again after 0.05 s, not 1 s.

A message (or reply) is visible before its payload has been uploaded, and the puller
then backs off 1 s, 2 s, ... (``pull_objects``' ``initial_backoff``). With fast polls this
race is the common case. Apply it in the ServerApp's process too (the SuperNode and its
SuperExec get it from their entry points).
"""

from __future__ import annotations

import importlib
from typing import Any

from fedguard.deploy.flower._originals import replace_item
from fedguard.deploy.flower.version import check_flower_version
from fedguard.errors import FedguardError

__all__ = ["NAME", "TARGET", "check", "patch_object_pull_backoff"]

NAME = "payload-backoff"
_MODULE = "flwr.supercore.inflatable.inflatable_utils"
TARGET = f"{_MODULE}.pull_objects, .pull_and_inflate_object_from_tree: initial_backoff, max_time"


def _targets() -> tuple[Any, ...]:
    check_flower_version()
    utils = importlib.import_module(_MODULE)
    return (utils.pull_objects, utils.pull_and_inflate_object_from_tree)


def check() -> None:
    """Raise FedguardError unless both pullers still take ``initial_backoff``."""
    for fn in _targets():
        defaults = fn.__kwdefaults__
        if not defaults or "initial_backoff" not in defaults:
            raise FedguardError(f"flwr {fn.__name__} has no initial_backoff; patch is stale")


def patch_object_pull_backoff(*, initial: float = 0.05, max_time: float | None = None) -> None:
    """Start Flower's object-pull retry back-off at ``initial`` s instead of 1 s.

    ``pull_objects`` retries an object that is announced but not yet uploaded with
    exponential back-off (1, 2, 4, ... s, cap 10 s, 500 tries, for up to 7200 s). The
    patch changes the default of ``initial_backoff`` (no caller passes it) and, given
    ``max_time``, the most seconds one pull waits in all: the ServerApp passes its round
    timeout, because a reply whose sender was killed mid-upload is otherwise waited for
    two hours (its round never ends). Flower then answers that reply with an error
    message (``MESSAGE_UNAVAILABLE``): the node counts as dropped.
    """
    if not 0 < initial <= 1:
        raise ValueError(f"initial: expected seconds in (0, 1], got {initial!r}")
    if max_time is not None and not max_time > 0:
        raise ValueError(f"max_time: expected seconds > 0, got {max_time!r}")
    check()
    for fn in _targets():
        replace_item(NAME, fn.__kwdefaults__, "initial_backoff", initial)
        if max_time is not None:
            if "max_time" not in fn.__kwdefaults__:
                raise FedguardError(f"flwr {fn.__name__} has no max_time; patch is stale")
            replace_item(NAME, fn.__kwdefaults__, "max_time", max_time)
