"""A ServerApp's replies pulled every 0.05 s, not every 3 s (the Flower adapter's workaround 1).

It is not a patch, so it lives with the transport, where both engines' exchanges
(:mod:`fedguard.transport.grid`) use it without importing the deployment layer.
``HttpGrid.send_and_receive`` sleeps a hard-coded 3 s between pulls for replies.
:func:`send_and_receive` replaces it using only the PUBLIC ``Grid.push_messages`` /
``Grid.pull_messages``, so it works on any Flower version and is not in the registry.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flwr.app import Message
    from flwr.serverapp import Grid

__all__ = ["send_and_receive"]


def send_and_receive(
    grid: Grid,
    messages: Iterable[Message],
    *,
    timeout: float,
    poll_interval: float = 0.05,
) -> list[Message]:
    """Push ``messages`` and pull replies until all are in or ``timeout`` s have passed.

    Same contract as ``Grid.send_and_receive`` (replies in arrival order, possibly fewer
    than sent on timeout) but pulls every ``poll_interval`` s instead of every 3 s. Uses
    only the public ``push_messages``/``pull_messages``. Each pull is one local HTTP call
    from the ServerApp to the SuperLink.
    """
    if not timeout >= 0:
        raise ValueError(f"timeout: expected a number of seconds >= 0, got {timeout!r}")
    if not poll_interval > 0:
        raise ValueError(f"poll_interval: expected seconds > 0, got {poll_interval!r}")
    deadline = time.monotonic() + timeout
    pending = set(grid.push_messages(messages))
    replies: list[Message] = []
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        remaining = deadline - time.monotonic()
        if not pending or remaining <= 0:
            break
        time.sleep(min(poll_interval, remaining))
    return replies
