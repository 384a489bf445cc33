"""fedguard.privacy: DP-SGD training (Opacus), privacy accountants, durable accountant state.

This package never imports Flower: the server, the client and the simulations all build
on it, and it must stay usable (and testable) without a federation runtime.
"""

from __future__ import annotations

from .accountants import Accountant, AccountantMethod, GaussianEvent, PrivacySpent
from .calibration import calibrate_noise_multiplier
from .dpsgd import GRAD_SAMPLE_MODES, DPTrainer, DPTrainResult, sample_rate_for, steps_per_epoch
from .state import AccountantStore

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
