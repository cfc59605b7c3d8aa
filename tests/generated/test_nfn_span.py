"""The span of the generated layer contains the span of the nfn package's HNPLinear and
NPLinear (and is strictly larger where nfn is incomplete, docs/math.md section 3)."""

from __future__ import annotations

import pytest
import torch

from nfn_runtime import WeightSpace, from_nfn, random_weight_space, to_nfn

nfn_layers = pytest.importorskip("nfn.layers")
nfn_common = pytest.importorskip("nfn.common")


def _jacobian_rows(layer, layout, draws, randomize):
    """Rows = vec(Jacobian of the linear part) for ``draws`` random parameter draws."""
    total = layout.num_params()
    eye = torch.eye(total, dtype=torch.float64)
    batch = torch.cat([eye, torch.zeros(1, total, dtype=torch.float64)])
    template = random_weight_space(layout, 1, 1, torch.float64)
    rows = []
    for _ in range(draws):
        randomize()
        with torch.no_grad():
            out = layer(template.unflatten_like(batch[:, None, :])).flatten()[:, 0, :]
        rows.append((out[:-1] - out[-1:]).reshape(-1))
    return torch.stack(rows)


def _rank(matrix):
    return int(torch.linalg.matrix_rank(matrix, rtol=1e-9))


@pytest.mark.parametrize(
    ("widths", "permute", "nfn_name", "ours", "theirs"),
    [
        ((2, 4, 4, 2), "hidden", "HNPLinear", 114, 112),
        ((2, 3, 3, 2), "hidden", "HNPLinear", 114, 112),
        ((3, 3, 3), "hidden", "HNPLinear", None, None),
        ((2, 4, 4, 2), "all", "NPLinear", 62, None),
        ((3, 3, 3), "all", "NPLinear", None, None),
    ],
    ids=lambda v: str(v),
)
def test_generated_span_contains_nfn_span(build, widths, permute, nfn_name, ours, theirs):
    derivation, linear_cls, _ = build(widths, "relu", permute, "none")
    layout = derivation.space.to_layout()
    module = linear_cls(1, 1).double()

    def randomize_ours():
        with torch.no_grad():
            for name, param in module.named_parameters():
                param.normal_() if name.endswith("_weight") else param.zero_()

    sample = to_nfn(random_weight_space(layout, 1, 1, torch.float64))
    spec = nfn_common.network_spec_from_wsfeat(sample)
    peer = getattr(nfn_layers, nfn_name)(spec, 1, 1).double()

    def randomize_peer():
        with torch.no_grad():
            for param in peer.parameters():
                param.normal_()

    def run_peer(ws: WeightSpace) -> WeightSpace:
        return from_nfn(peer(to_nfn(ws)))

    dim = derivation.basis.dim
    ours_rows = _jacobian_rows(module, layout, dim + 5, randomize_ours)
    peer_rows = _jacobian_rows(run_peer, layout, dim + 5, randomize_peer)
    ours_rank, peer_rank = _rank(ours_rows), _rank(peer_rows)
    assert ours_rank == dim
    assert _rank(torch.cat([ours_rows, peer_rows])) == ours_rank  # nfn's span lies inside ours
    if ours is not None:
        assert ours_rank == ours
    if theirs is not None:
        assert peer_rank == theirs
    assert peer_rank <= ours_rank
