"""K clients' copies of ANY model at once: ``torch.func`` per-example gradients, vmapped.

:class:`~fedguard.privacy.stacked.StackedSequential` covers ``nn.Sequential`` models of
the layers it knows. Every other model whose weights are all trainable parameters (no
buffers: nothing a forward pass updates or shares between examples) is trained the
generic way: the gradient of ONE example's loss (``torch.func.grad`` of a
``functional_call``), vmapped over the examples of a batch and again over the clients,
each client with its own stacked weights. Per-example gradients are materialised
(``[K, B, *shape]`` per parameter), clipped and summed as Opacus clips them.

Whether a model's forward pass can be vmapped (no data-dependent Python control flow,
no in-place ops on inputs, no ops without a batching rule) is known only by running it:
:meth:`VmappedModel.probe` does, once, on one example.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - conventional alias
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

__all__ = ["VmappedModel", "vmapped_problems"]


def vmapped_problems(model: nn.Module) -> list[str]:
    """Why ``model`` cannot be vmapped, as far as its structure tells (empty: try it)."""
    problems = []
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        problems.append(f"has buffers ({', '.join(buffers[:3])})")
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    if frozen:
        problems.append(f"frozen parameters ({', '.join(frozen[:3])})")
    if not any(True for _ in model.parameters()):
        problems.append("no parameters")
    return problems


class VmappedModel:
    """Per-example clipped gradient sums of K copies of ``model``, by ``torch.func``.

    ``model`` supplies the computation only; weights come in ``model.parameters()``
    order (= ``state_dict`` order: a model without buffers), stacked to ``[K, *shape]``.
    """

    def __init__(self, model: nn.Module) -> None:
        problems = vmapped_problems(model)
        if problems:
            raise ValueError("; ".join(problems))
        self._model = model
        self._names = [name for name, _ in model.named_parameters()]
        self._per_client = self._build()

    def _build(self) -> Callable[..., Any]:
        """``(params [K, ...], x [K, B, ...], y [K, B], weight) -> (grads [K, B, ...],
        losses [K, B])``: one example's gradient, vmapped over examples, then clients."""
        model, names = self._model, self._names

        def loss(
            params: tuple[torch.Tensor, ...],
            x: torch.Tensor,
            y: torch.Tensor,
            weight: torch.Tensor | None,
        ) -> torch.Tensor:
            logits = functional_call(model, dict(zip(names, params, strict=True)), (x[None],))
            return F.cross_entropy(logits, y[None], weight=weight, reduction="sum")

        per_example = vmap(grad_and_value(loss), in_dims=(None, 0, 0, None))
        return vmap(per_example, in_dims=(0, 0, 0, None))

    def clipped_sums(
        self,
        params: Sequence[torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        valid: torch.Tensor,
        max_grad_norm: float,
        class_weight: torch.Tensor | None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each client's sum of clipped per-example gradients, and the per-example losses.

        ``x`` ``[K, B, ...]``, ``y`` ``[K, B]``; ``valid`` ``[K, B]`` marks sampled examples
        (padding is computed and then weighted 0).
        """
        with torch.enable_grad():
            grads, losses = self._per_client(tuple(p.detach() for p in params), x, y, class_weight)
        sq = sum(g.flatten(2).pow(2).sum(2) for g in grads)
        # Opacus's clipping factor, to the last epsilon: min(1, C / (norm + 1e-6)).
        factors = (max_grad_norm / (torch.as_tensor(sq).sqrt() + 1e-6)).clamp(max=1.0) * valid
        sums = [torch.einsum("kb,kb...->k...", factors, g) for g in grads]
        return sums, losses.detach() * valid

    def probe(self, example: torch.Tensor) -> None:
        """Run one client's gradient on ``example`` ``[1, ...]``: raises what vmap raises."""
        params = tuple(p.detach()[None] for p in self._model.parameters())
        y = torch.zeros((1, 1), dtype=torch.long, device=example.device)
        self.clipped_sums(
            params,
            example[None],
            y,
            valid=torch.ones((1, 1), device=example.device),
            max_grad_norm=1.0,
            class_weight=None,
        )
