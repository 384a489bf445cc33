"""Public limits of a round, the same in a deployment and a Flower-engine simulation.

Imports nothing (a config loader that only needs the number stays light).
"""

from __future__ import annotations

__all__ = ["MAX_UPDATE_NORM"]

MAX_UPDATE_NORM = 1e4
"""Default ``[federation] max-update-norm``: the largest L2 norm of an update (node weights
minus global) a plain round accepts. Generous (a DP-SGD round moves a model by about
lr x steps x (clip + noise)); it stops an absurd one. Secure rounds clip to clip-range."""
