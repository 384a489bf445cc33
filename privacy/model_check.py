"""Every reason Opacus refuses a model for per-sample gradients, named by submodule."""

from __future__ import annotations

from opacus.utils.module_utils import trainable_modules
from opacus.validators import ModuleValidator
from torch import nn

__all__ = ["model_problems"]


def _first_sentence(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text.split(". ")[0].rstrip(".")


def model_problems(model: nn.Module) -> list[str]:
    """Every reason Opacus refuses ``model``, one short phrase each, naming the submodule."""
    was_training = model.training
    model.train()  # Opacus refuses eval mode; DPTrainer.train switches modes itself
    try:
        problems = [
            f"{name or '<model>'} ({type(sub).__name__}): {_first_sentence(err)}"
            for name, sub in trainable_modules(model)
            for err in ModuleValidator.VALIDATORS.get(type(sub), lambda _m: [])(sub)
        ]
        # GradSampleModule(strict=True) also refuses trainable layers with buffers.
        problems += [
            f"{name or '<model>'} ({type(sub).__name__}): trainable layer with buffers"
            for name, sub in trainable_modules(model)
            if any(True for _ in sub.buffers(recurse=False))
            and type(sub) not in ModuleValidator.VALIDATORS
        ]
        # Anything Opacus's own check finds that the named pass above did not.
        if not problems:
            problems = [_first_sentence(e) for e in ModuleValidator.validate(model, strict=False)]
    finally:
        model.train(was_training)
    return problems
