"""Flower constants fedguard's round code needs that Flower's public API does not export.

Imported on its own (not by the package ``__init__``): it imports Flower.
"""

from __future__ import annotations

from flwr.common.constant import SUPERLINK_NODE_ID

__all__ = ["SUPERLINK_NODE_ID"]
