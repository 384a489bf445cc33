"""Temporary: the old home of fedguard's Flower workarounds, now ``fedguard.deploy.flower``.

Only ``server/secure_round.py`` (and its test, ``tests/deploy/test_secure_round.py``)
still import from here, ``send_and_receive``; remove this module once they import
``fedguard.deploy.flower`` instead.
"""

from fedguard.deploy.flower.grid_poll import send_and_receive

__all__ = ["send_and_receive"]
