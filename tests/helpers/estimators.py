"""Shared helpers for tests that compare bound estimators in expectation."""

from __future__ import annotations

import torch


def stratified_se(v: torch.Tensor, strata: torch.Tensor) -> float:
    """s.e. of mean(v) when the strata counts are fixed by design: sqrt(sum_j N_j s_j^2) / N."""
    v = v.double()
    var = sum(v[strata == j].var() * (strata == j).sum() for j in strata.unique())
    return (var.sqrt() / v.numel()).item()


def term_draws(fn, x: torch.Tensor, reps: int, seed: int) -> dict[str, torch.Tensor]:
    """{term: (reps, B)} from one call of `fn` (returning a dict of per-example terms) on x repeated reps
    times, plus the total."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        terms = fn(x.repeat(reps, *([1] * (x.dim() - 1))), generator=g)
    out = {k: v.double().reshape(reps, x.shape[0]) for k, v in terms.items()}
    out["total"] = sum(out.values())
    return out
