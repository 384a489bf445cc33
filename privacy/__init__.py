"""fedguard.privacy: DP-SGD training (Opacus), privacy accountants, durable accountant state.

This package never imports Flower: the server, the client and the simulations all build
on it, and it must stay usable (and testable) without a federation runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedguard._lazy import lazy_getattr

if TYPE_CHECKING:
    from .accountants import Accountant, AccountantMethod, GaussianEvent, PrivacySpent
    from .calibration import calibrate_noise_multiplier
    from .dpsgd import (
        GRAD_SAMPLE_MODES,
        DPTrainer,
        DPTrainResult,
        sample_rate_for,
        steps_per_epoch,
    )
    from .state import AccountantStore

# Imported on first use (PEP 562): a light submodule (the ledger, read by ``fedguard
# budget``) must not pull in torch and opacus through this package's import.
_LAZY = {
    "Accountant": "accountants",
    "AccountantMethod": "accountants",
    "GaussianEvent": "accountants",
    "PrivacySpent": "accountants",
    "calibrate_noise_multiplier": "calibration",
    "GRAD_SAMPLE_MODES": "dpsgd",
    "DPTrainer": "dpsgd",
    "DPTrainResult": "dpsgd",
    "sample_rate_for": "dpsgd",
    "steps_per_epoch": "dpsgd",
    "AccountantStore": "state",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


__all__ = [
    "GRAD_SAMPLE_MODES",
    "Accountant",
    "AccountantMethod",
    "AccountantStore",
    "DPTrainResult",
    "DPTrainer",
    "GaussianEvent",
    "PrivacySpent",
    "calibrate_noise_multiplier",
    "sample_rate_for",
    "steps_per_epoch",
]
