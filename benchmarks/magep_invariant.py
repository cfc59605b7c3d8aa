"""MAGEP-NFN's polynomial invariant layer, re-implemented here for the speed comparison.

Written in this repository from the formulas of the paper (Vo, Tran, Tran Huu et al.,
"Equivariant Polynomial Functional Networks", ICML 2025: MAGEP-NFN, the polynomial successor
of Tran et al.'s Monomial-NFN). The authors' code is under a license that forbids copying:
nothing here is copied from it. Their code was read only for facts (which invariant terms the
layer uses, their shapes, which path products it evaluates).

For an MLP weight space with weights ``W_i`` (``n_i x n_(i-1)``) and biases ``b_i``,
``i = 1..L``, and path products ``[W](s,t) = W_s W_(s-1) ... W_(t+1)``, the layer computes, per
input channel, the stable polynomial terms that carry only fixed (input/output) indices:

- ``[W](L,0)``                                   (n_L x n_0 values)
- ``[WW](L,0)(L,0) = [W](L,0) Psi [W](L,0)``        (n_L x n_0)
- ``[bW](L)(L,0) = b_L Psi' [W](L,0)``              (n_L x n_0)
- ``sum_t [W](L,t) b_t``, t = 1..L-1                (n_L; one set of coefficients for all t)
- ``tr([W](s,0) Psi_s [W](L,s))``, s = 1..L-1       (1 each)
- ``Psi'_s [W](L,s) b_s``, s = 1..L-1               (1 each)
- ``b_L``                                          (n_L)

with learned gluing parameters ``Psi`` (``n_0 x n_L``) and ``Psi'`` (``1 x n_L``) per channel,
and mixes all of them over channels with one learned affine map to ``out_channels``. Every
term is invariant under permutations of the hidden neurons and under their positive scalings
(ReLU) or sign flips (tanh): the hidden factors cancel along each path, and the traces close
the only open hidden index.

Path products are evaluated with one of two schedules:

- ``"chain"`` (default): the prefix products ``[W](s,0)`` and suffix products ``[W](L,s)`` once
  each (O(L) matmuls), the strongest peer we could write;
- ``"pairs"``: every ``[W](s,t)``, 0 <= t < s <= L, as the published code does (O(L^2)
  matmuls, ``[W](s,t) = W_s [W](s-1,t)``), with the traces read off the full ``n_s x n_s``
  products.

As in the paper's layer the path products are not normalized (no ``1/sqrt(n)`` factors).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from nfn_runtime import WeightSpace

__all__ = ["MagepInvariant", "Schedule"]

Schedule = Literal["chain", "pairs"]


class MagepInvariant(nn.Module):
    """The MAGEP-NFN invariant layer of an MLP weight space with ``widths = (n_0, ..., n_L)``:
    ``WeightSpace`` with ``in_channels`` channels -> ``(batch, out_channels)``."""

    def __init__(
        self,
        widths: tuple[int, ...],
        in_channels: int,
        out_channels: int,
        schedule: Schedule = "chain",
    ) -> None:
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"an MLP needs at least two widths, got {widths}")
        if schedule not in ("chain", "pairs"):
            raise ValueError(f"unknown schedule {schedule!r} (valid: chain, pairs)")
        self.widths = tuple(widths)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.schedule = schedule
        layers, n_in, n_out = len(widths) - 1, widths[0], widths[-1]
        self.psi = nn.Parameter(torch.empty(in_channels, n_in, n_out))
        self.psi_row = nn.Parameter(torch.empty(in_channels, 1, n_out))
        self.psi_trace = nn.Parameter(torch.empty(max(layers - 1, 0), in_channels, n_in, n_out))
        self.psi_trace_row = nn.Parameter(torch.empty(max(layers - 1, 0), in_channels, 1, n_out))
        self.mix = nn.Linear(self.features_per_channel * in_channels, out_channels)
        self.reset_parameters()

    @property
    def features_per_channel(self) -> int:
        """3 n_L n_0 (the three matrices) + 2 n_L (Wb, b_L) + 2 (L - 1) (the traces)."""
        layers, n_in, n_out = len(self.widths) - 1, self.widths[0], self.widths[-1]
        return 3 * n_out * n_in + 2 * n_out + 2 * (layers - 1)

    def reset_parameters(self) -> None:
        """Psi with unit-variance gluing; the mixing map like ``nn.Linear``."""
        n_in, n_out = self.widths[0], self.widths[-1]
        with torch.no_grad():
            self.psi.normal_(0.0, 1.0 / math.sqrt(n_in * n_out))
            self.psi_trace.normal_(0.0, 1.0 / math.sqrt(n_in * n_out))
            self.psi_row.normal_(0.0, 1.0 / math.sqrt(n_out))
            self.psi_trace_row.normal_(0.0, 1.0 / math.sqrt(n_out))
        self.mix.reset_parameters()

    def forward(self, ws: WeightSpace) -> Tensor:
        features = self.features(ws)
        batch = features[0].shape[0]
        flat = torch.cat([f.reshape(batch, -1) for f in features], dim=1)
        return F.linear(flat, self.mix.weight, self.mix.bias)

    def features(self, ws: WeightSpace) -> list[Tensor]:
        """The invariant terms before mixing, ``(batch, in_channels, ...)`` each, in the order
        of the module docstring: ``[W](L,0)``, ``[WW](L,0)(L,0)``, ``[bW](L)(L,0)``,
        ``sum_t [W](L,t) b_t``, ``b_L``, then per ``s = 1..L-1`` the two traces."""
        weights = list(ws.weights)
        biases = list(ws.biases)
        if len(weights) != len(self.widths) - 1 or any(b is None for b in biases):
            raise ValueError("expected an MLP weight space with a bias in every layer")
        present = [bias for bias in biases if bias is not None]
        w = [weights[0], *weights]  # w[i] = W_i (batch, C, n_i, n_(i-1)); w[0] unused
        b = [present[0], *present]  # b[i] = b_i (batch, C, n_i); b[0] unused
        if self.schedule == "chain":
            return self._chain_features(w, b)
        return self._pair_features(w, b)

    def _glued(self, full: Tensor, last_bias: Tensor) -> list[Tensor]:
        """``[W](L,0)``, ``[W](L,0) Psi [W](L,0)`` and ``b_L Psi' [W](L,0)``."""
        ww = torch.matmul(torch.matmul(full, self.psi), full)
        bw = last_bias.unsqueeze(-1) * torch.matmul(self.psi_row, full)
        return [full, ww, bw]

    def _chain_features(self, w: list[Tensor], b: list[Tensor]) -> list[Tensor]:
        """Prefix products ``P_s = [W](s,0)`` and suffix products ``Q_s = [W](L,s)`` once each."""
        layers = len(w) - 1
        prefix = [w[1], w[1]]  # prefix[s] = [W](s,0); prefix[0] unused
        for s in range(2, layers + 1):
            prefix.append(torch.matmul(w[s], prefix[s - 1]))
        suffix: dict[int, Tensor] = {layers - 1: w[layers]}
        for s in range(layers - 2, 0, -1):
            suffix[s] = torch.matmul(suffix[s + 1], w[s + 1])
        features = self._glued(prefix[layers], b[layers])
        wb = sum(
            (torch.matmul(suffix[t], b[t].unsqueeze(-1)).squeeze(-1) for t in range(1, layers)),
            torch.zeros_like(b[layers]),
        )
        traces = []
        for s in range(1, layers):
            left = torch.matmul(prefix[s], self.psi_trace[s - 1])  # (B, C, n_s, n_L)
            traces.append((left * suffix[s].transpose(-1, -2)).sum(dim=(-1, -2)))
            row = torch.matmul(self.psi_trace_row[s - 1], suffix[s]).squeeze(-2)  # (B, C, n_s)
            traces.append((row * b[s]).sum(dim=-1))
        features += [wb, b[layers], *(t.unsqueeze(-1) for t in traces)]
        return features

    def _pair_features(self, w: list[Tensor], b: list[Tensor]) -> list[Tensor]:
        """Every ``[W](s,t)`` (the published code's schedule); traces of full products."""
        layers = len(w) - 1
        path: dict[tuple[int, int], Tensor] = {}
        for s in range(1, layers + 1):
            for t in range(s):
                path[s, t] = w[s] if t == s - 1 else torch.matmul(w[s], path[s - 1, t])
        features = self._glued(path[layers, 0], b[layers])
        wb = sum(
            (
                torch.matmul(path[layers, t], b[t].unsqueeze(-1)).squeeze(-1)
                for t in range(1, layers)
            ),
            torch.zeros_like(b[layers]),
        )
        traces = []
        for s in range(1, layers):
            square = torch.matmul(torch.matmul(path[s, 0], self.psi_trace[s - 1]), path[layers, s])
            traces.append(torch.diagonal(square, dim1=-2, dim2=-1).sum(-1))
            outer = torch.matmul(
                b[s].unsqueeze(-1), torch.matmul(self.psi_trace_row[s - 1], path[layers, s])
            )
            traces.append(torch.diagonal(outer, dim1=-2, dim2=-1).sum(-1))
        features += [wb, b[layers], *(t.unsqueeze(-1) for t in traces)]
        return features

    def extra_repr(self) -> str:
        return (
            f"widths={self.widths}, in_channels={self.in_channels}, "
            f"out_channels={self.out_channels}, schedule={self.schedule!r}"
        )
