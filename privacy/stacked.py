"""K copies of one ``nn.Sequential`` run at once, and their clipped per-sample gradient sums.

:class:`~fedguard.privacy.cohort.CohortDPTrainer` trains many clients' copies of one model
in one pass: every parameter is stacked to ``[K, *shape]`` and every activation is
``[K, B, ...]`` (client, example, features). Linear layers become batched matrix products,
convolutions one grouped convolution (group k = client k), GroupNorm a normalisation
followed by each client's affine map; layers without parameters (GroupNorm without an
affine map among them, as in ``scatter_cnn``) run on the flattened
``[K * B, ...]`` batch.

Per-sample clipping is book-keeping clipping (Bu et al. 2023), as in ``bk`` mode
(:mod:`fedguard.privacy.persample`): one backward pass for the gradients ``g`` of each
trainable layer's OUTPUT, each layer's input ``a`` recorded on the way forward. Linear
layers never materialise per-sample gradients (example i's gradient is the outer product
``g_i a_i^T``, whose squared norm is exactly ``|g_i|^2 (|a_i|^2 + 1)``; the clipped sum is
one batched product). A convolution's and GroupNorm's per-example gradients are formed (a
convolution's from its input's patches, one batched product), and each example's norm is
taken from the very tensor that is then scaled and summed. Not the ghost norm (Gram
matrices of patches and output gradients), though it is cheaper for some layers: its sum
cancels in float32, so for crafted inputs the norm it gives is far from the gradient's (an
example contributed 1.9x the bound, or NaN: ``test_redteam_18_stacked_clipping.py``).
Example gradients depend only on ``g`` and ``a``, never on which client's weights produced
them, so one call serves all K clients. Exact up to float rounding: the same sums as
clipping each example's gradient on its own (``tests/privacy/test_stacked.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - conventional alias
from torch import nn

__all__ = ["StackedSequential", "stacked_problems"]

_STATELESS = (
    nn.Flatten,
    nn.ReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.ELU,
    nn.LeakyReLU,
    nn.GELU,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
)
_TRAINABLE = (nn.Linear, nn.Conv2d, nn.GroupNorm)


def stacked_problems(model: nn.Module) -> list[str]:
    """Why ``model`` cannot be stacked (empty: it can), one phrase per problem."""
    if not isinstance(model, nn.Sequential):
        return [f"<model> ({type(model).__name__}): not an nn.Sequential"]
    problems = []
    for name, layer in model.named_children():
        where = f"{name} ({type(layer).__name__})"
        if any(True for _ in layer.buffers()):
            problems.append(f"{where}: has buffers")
        if isinstance(layer, _STATELESS) or _plain_group_norm(layer):
            if isinstance(layer, nn.Flatten) and (layer.start_dim, layer.end_dim) != (1, -1):
                problems.append(f"{where}: flattens other dims than 1..-1")
            continue
        if not isinstance(layer, _TRAINABLE):
            problems.append(f"{where}: layer type not supported")
            continue
        params = list(layer.parameters())
        if not params or not all(p.requires_grad for p in params):
            problems.append(f"{where}: frozen or missing parameters")
        if isinstance(layer, nn.Conv2d) and (
            layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str)
        ):
            problems.append(f"{where}: grouped, non-zero-padded or 'same'-padded convolution")
    return problems


def _plain_group_norm(layer: nn.Module) -> bool:
    """A GroupNorm without affine parameters normalises each example alone: stateless."""
    return isinstance(layer, nn.GroupNorm) and not layer.affine


@dataclass
class Record:
    """One trainable layer's input (``a``; GroupNorm: its normalised input) and output."""

    layer: nn.Module
    first: int  # index of the layer's weight in the stacked parameter list
    a: torch.Tensor
    z: torch.Tensor


class StackedSequential:
    """Forward pass and clipped gradient sums of K stacked copies of ``model``.

    ``model`` only supplies the architecture (layer types and hyperparameters); its own
    weights are never read or written. Parameters come in ``model.state_dict()`` order,
    each stacked to ``[K, *shape]``.
    """

    def __init__(self, model: nn.Module) -> None:
        problems = stacked_problems(model)
        if problems:
            raise ValueError("; ".join(problems))
        self._layers: list[tuple[nn.Module, int]] = []  # (layer, index of its first param)
        index = 0
        for layer in model.children():
            self._layers.append((layer, index))
            index += len(list(layer.parameters()))
        self.num_params = index

    def forward(
        self, params: list[torch.Tensor], x: torch.Tensor
    ) -> tuple[torch.Tensor, list[Record]]:
        """Logits ``[K, B, classes]`` of each client's copy on its own batch ``x[k]``."""
        k, b = int(x.shape[0]), int(x.shape[1])
        records: list[Record] = []
        for layer, first in self._layers:
            if isinstance(layer, nn.Linear):
                if x.ndim != 3:
                    raise ValueError(
                        f"Linear layer: expected flat inputs [batch, features], got "
                        f"{tuple(x.shape[1:])} (put an nn.Flatten before it)"
                    )
                z = torch.bmm(x, params[first].transpose(1, 2))
                if layer.bias is not None:
                    z = z + params[first + 1][:, None, :]
            elif isinstance(layer, nn.Conv2d):
                w = params[first]
                conv_bias = params[first + 1] if layer.bias is not None else None
                grouped = x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])
                out = F.conv2d(
                    grouped,
                    w.reshape(-1, *w.shape[2:]),
                    None if conv_bias is None else conv_bias.reshape(-1),
                    layer.stride,
                    layer.padding,
                    layer.dilation,
                    groups=k,
                )
                z = out.view(b, k, -1, *out.shape[2:]).transpose(0, 1)
                records.append(Record(layer=layer, first=first, a=x.detach(), z=z))
                x = z
                continue
            elif isinstance(layer, nn.GroupNorm) and layer.affine:
                w, bias = params[first], params[first + 1]
                normed = F.group_norm(x.flatten(0, 1), layer.num_groups, eps=layer.eps)
                normed = normed.view_as(x)
                shape = (k, 1, -1) + (1,) * (x.ndim - 3)
                z = torch.addcmul(bias.view(shape), normed, w.view(shape))  # one pass
                records.append(Record(layer=layer, first=first, a=normed.detach(), z=z))
                x = z
                continue
            elif _identity_pool(layer, x):
                continue  # exactly the identity, forward and backward: skip its two copies
            else:
                flat = x.flatten(0, 1)
                if isinstance(layer, nn.MaxPool2d) and flat.ndim == 4:
                    # The CPU kernel is ~10x faster channels-last; same maxima, same
                    # (first) argmax on ties, so the same gradient.
                    flat = flat.contiguous(memory_format=torch.channels_last)
                y = layer(flat)
                x = y.view(k, b, *y.shape[1:])
                continue
            records.append(Record(layer=layer, first=first, a=x.detach(), z=z))
            x = z
        return x, records

    def held_floats(self, records: list[Record]) -> int:
        """Floats :meth:`clipped_sums` holds per example beyond the records' ``a`` and
        ``z``, from the records of a one-example forward pass: each convolution's patches
        and per-example gradient, GroupNorm's per-example gradients."""
        total = 0
        for rec in records:
            layer = rec.layer
            if isinstance(layer, nn.Conv2d):
                positions = math.prod(rec.z.shape[3:])
                patch = layer.in_channels * math.prod(layer.kernel_size)
                total += positions * patch + layer.out_channels * (patch + 1)
            elif isinstance(layer, nn.GroupNorm):
                total += 2 * layer.num_channels
        return total

    def clipped_sums(
        self,
        records: list[Record],
        grads: tuple[torch.Tensor, ...],
        *,
        max_grad_norm: float,
        valid: torch.Tensor,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each client's sum of its examples' gradients clipped to ``max_grad_norm``.

        ``grads[i]`` is the gradient of the summed loss with respect to ``records[i].z``;
        ``valid`` ``[K, B]`` marks real (sampled) examples. Returns the sums in parameter
        order and the per-example clipping factors (0 where not valid).
        """
        k, b = int(valid.shape[0]), int(valid.shape[1])
        sq = torch.zeros(k, b, dtype=grads[0].dtype, device=grads[0].device)
        samples: list[list[torch.Tensor]] = []
        for rec, g in zip(records, grads, strict=True):
            if isinstance(rec.layer, nn.Linear):
                bias = 1.0 if rec.layer.bias is not None else 0.0
                sq += (g * g).sum(2) * ((rec.a * rec.a).sum(2) + bias)
                samples.append([])
                continue
            if isinstance(rec.layer, nn.Conv2d):
                conv_sq, per_sample = _conv_samples(rec, g)
                sq += conv_sq
            else:
                per_sample = _group_norm_samples(rec, g)  # [K, B, C] each
                for t in per_sample:
                    sq += (t * t).sum(2)
            samples.append(per_sample)
        # Opacus's clipping factor, to the last epsilon: min(1, C / (norm + 1e-6)).
        factors = (max_grad_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0) * valid
        sums: list[torch.Tensor | None] = [None] * self.num_params
        for rec, g, layer_samples in zip(records, grads, samples, strict=True):
            if isinstance(rec.layer, nn.Linear):
                weighted = g * factors[:, :, None]
                sums[rec.first] = torch.bmm(weighted.transpose(1, 2), rec.a)
                if rec.layer.bias is not None:
                    sums[rec.first + 1] = weighted.sum(1)
            else:  # the very tensors whose norms gave the factors
                for offset, t in enumerate(layer_samples):
                    sums[rec.first + offset] = torch.einsum("kb,kb...->k...", factors, t)
        missing = [i for i, s in enumerate(sums) if s is None]
        if missing:  # cannot happen for a stackable Sequential: every layer runs
            raise RuntimeError(f"no gradient for stacked parameters {missing}")
        return [s for s in sums if s is not None], factors


def _identity_pool(layer: nn.Module, x: torch.Tensor) -> bool:
    """An adaptive average pool whose output size is its input's (``cnn`` on 8x8 digits)."""
    if not isinstance(layer, nn.AdaptiveAvgPool2d):
        return False
    size = layer.output_size
    wanted = (size, size) if size is None or isinstance(size, int) else tuple(size)
    return all(w is None or w == n for w, n in zip(wanted, x.shape[-2:], strict=True))


def _group_norm_samples(rec: Record, g: torch.Tensor) -> list[torch.Tensor]:
    """Per-example gradients ``[K, B, C]`` of a GroupNorm's affine weight and bias."""
    spatial = tuple(range(3, g.ndim))
    gw = (g * rec.a).sum(spatial) if spatial else g * rec.a
    gb = g.sum(spatial) if spatial else g
    return [gw, gb]


def _conv_samples(rec: Record, g: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A convolution's per-example gradients ``[K, B, *shape]`` and their squared norms
    ``[K, B]``: example i's weight gradient ``g_i a_i^T`` (``g_i``: ``[Cout, L]``, ``a_i``
    its patches ``[L, Cin*kh*kw]``), one batched product."""
    k, b = int(g.shape[0]), int(g.shape[1])
    layer = rec.layer
    assert isinstance(layer, nn.Conv2d)
    out = g.reshape(k * b, g.shape[2], -1)  # [K*B, Cout, L]
    patches, channels_last = _patches(layer, rec.a.flatten(0, 1), int(g.shape[-1]))
    gw = torch.bmm(out, patches)  # [K*B, Cout, patch]
    # The norm straight from the gradient: no squared copy of it.
    sq = torch.linalg.vector_norm(gw, dim=(1, 2)).square()
    if channels_last:  # (kh, kw, Cin) -> the weight's (Cin, kh, kw)
        cout, cin, kh, kw = layer.weight.shape
        gw = gw.view(-1, cout, kh, kw, cin).permute(0, 1, 4, 2, 3)
    samples = [gw.reshape(k, b, *layer.weight.shape)]
    if layer.bias is not None:
        bias = out.sum(2)  # [K*B, Cout]
        sq = sq + (bias * bias).sum(1)
        samples.append(bias.view(k, b, -1))
    return sq.view(k, b), samples


def channels_last_patches(*, cin: int, kw: int, width: int) -> bool:
    """Whether :func:`_patches` copies from a channels-last input: it moves runs of
    ``Cin * kw`` floats, the other layout runs of one output row (``width`` floats)."""
    return cin * kw >= width


def _padding(layer: nn.Conv2d) -> tuple[int, int]:
    """A convolution's zero padding (height, width); ``stacked_problems`` refuses 'same'."""
    if isinstance(layer.padding, str):
        raise ValueError(f"Conv2d padding: expected ints, got {layer.padding!r}")
    return int(layer.padding[0]), int(layer.padding[1])


def _patches(layer: nn.Conv2d, x: torch.Tensor, width: int) -> tuple[torch.Tensor, bool]:
    """``x``'s patches as ``layer`` sees them, ``[N, L, Cin*kh*kw]``, and whether a patch
    is ordered (kh, kw, Cin) (True) or as the weight, (Cin, kh, kw) (False).

    What ``F.unfold`` computes, which on the CPU loops over examples: slow over many small
    ones. Instead one strided copy, whichever of two layouts moves the longer contiguous
    runs: a patch row of the padded input made channels-last (``Cin * kw`` floats) or one
    kernel offset's output row (``width`` floats).
    """
    (kh, kw), (ph, pw) = layer.kernel_size, _padding(layer)
    (sh, sw), (dh, dw) = layer.stride, layer.dilation
    n, cin = int(x.shape[0]), int(x.shape[1])
    rows = (int(x.shape[2]) + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    if channels_last_patches(cin=cin, kw=kw, width=width):
        padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph)).contiguous()
        st = padded.stride()  # [N, Hp, Wp, Cin]
        view = padded.as_strided(
            (n, rows, width, kh, kw, cin),
            (st[0], sh * st[1], sw * st[2], dh * st[1], dw * st[2], st[3]),
        )
        return view.reshape(n, rows * width, kh * kw * cin), True
    padded = F.pad(x, (pw, pw, ph, ph))
    st = padded.stride()  # [N, Cin, Hp, Wp]
    view = padded.as_strided(
        (n, cin, kh, kw, rows, width),
        (st[0], st[1], dh * st[2], dw * st[3], sh * st[2], sw * st[3]),
    )
    return view.reshape(n, cin * kh * kw, rows * width).transpose(1, 2), False
