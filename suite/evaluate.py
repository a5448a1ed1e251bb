"""NLL estimation over repeats and step counts -> tidy result rows (suite/results.py make_row).

Protocol (the BFN reference test script's, `estimator="plain"`): each pass draws, per example, one t
(or step i) and one noise sample for the bound; a pass's value is the mean over the split; the reported
value is the mean over `n_repeats` passes with the standard error of those pass means (with one pass:
the standard error over examples). Dynamically binarised data are re-binarised on every pass. Under
torchrun the split is sharded across ranks and the sums are all-reduced.

`estimator="systematic"` spends the same network evaluations with less variance: the repeats form
`groups` independent groups; within a group of R' repeats each example's times are t = (u + r/R') mod 1
(suite/timesteps.py), evenly spaced over [0, 1), with u drawn afresh per group. The standard error is
that of the group means, which are independent and unbiased.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from suite import results, timesteps, units
from suite.data.base import derive_seed


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def nll_passes(method, data, *, split: str = "test", n_steps: int | None = None, n_repeats: int = 1,
               batch_size: int = 100, max_examples: int | None = None, seed: int = 0,
               device: torch.device | str = "cpu", progress: bool = False, estimator: str = "plain",
               groups: int = 1):
    """Returns (per-pass mean NLL bound in nats per example, shape (n_repeats,); the first pass's
    per-example values, for the single-pass standard error; the number of examples per pass)."""
    rank, world = _world()
    if estimator not in ("plain", "systematic"):
        raise ValueError(f"estimator must be 'plain' or 'systematic', got {estimator!r}")
    if estimator == "systematic" and (groups < 1 or n_repeats % groups):
        raise ValueError(f"systematic estimator: n_repeats={n_repeats} must be a positive multiple of groups={groups}")
    per_group = n_repeats // groups if estimator == "systematic" else 1
    was = method.training
    method.eval()
    means, first = [], []
    limit = max_examples if max_examples is not None else data.num_examples(split)
    bar = tqdm(total=n_repeats, disable=not progress or rank != 0, leave=False,
               desc=f"{method.label} n={n_steps or 'inf'}")
    for r in range(n_repeats):
        torch.manual_seed(derive_seed(seed, r, n_steps or 0, rank))
        total = torch.zeros(2, dtype=torch.float64)
        seen = 0  # examples of the whole split visited so far (across ranks), to honour max_examples
        for b, x in enumerate(data.batches(split, batch_size, seed=seed, epoch=r, shuffle=False, drop_last=False,
                                           rank=rank, world_size=world, device=device)):
            take = min(x.shape[0], max(0, math.ceil((limit - seen) / world)))
            if take <= 0:
                break
            x = x[:take]
            if estimator == "systematic":
                g = torch.Generator().manual_seed(derive_seed(seed, r // per_group, b, rank, n_steps or 0, 77))
                with timesteps.systematic(torch.rand(take, generator=g, dtype=torch.float64), r % per_group, per_group):
                    v = method.nll(x, n_steps).double().cpu()
            else:
                v = method.nll(x, n_steps).double().cpu()
            if not torch.isfinite(v).all():
                raise FloatingPointError(f"{method.name}: non-finite NLL bound at n_steps={n_steps}; "
                                         "the checkpoint has diverged or the data is out of range")
            total += torch.stack([v.sum(), torch.tensor(float(v.numel()), dtype=torch.float64)])
            if r == 0:
                first.append(v)
            seen += take * world
        if world > 1:
            dist.all_reduce(total)
        means.append(float(total[0] / total[1]))
        bar.update(1)
    bar.close()
    method.train(was)
    out = np.asarray(means)
    per_example = torch.cat(first).numpy() if first else np.zeros(0)
    return out, per_example, int(total[1])


def evaluate(method, data, *, n_steps_list=(None,), split: str = "test", n_repeats: int = 1,
             batch_size: int = 100, max_examples: int | None = None, seed: int = 0,
             device: torch.device | str = "cpu", unit: str | None = None, protocol: str = "",
             progress: bool = False, estimator: str = "plain", groups: int = 1) -> list[dict]:
    """Tidy rows: one per step count, value and standard error in `unit` (default: the data set's)."""
    spec = data.spec
    unit = unit or units.default_unit(spec.kind, spec.name)
    rows = []
    discrete_T = method.num_steps  # None: continuous time; else the trained grid n_steps=None evaluates on
    for n in n_steps_list:
        if discrete_T is not None and n is not None and n > discrete_T:
            continue  # a discrete-time model has no bound finer than the grid it was trained on
        if discrete_T is not None and n == discrete_T and None in n_steps_list:
            continue  # the same bound as n=None (its full grid), evaluated once
        means, per_ex, count = nll_passes(method, data, split=split, n_steps=n, n_repeats=n_repeats,
                                          batch_size=batch_size, max_examples=max_examples, seed=seed,
                                          device=device, progress=progress, estimator=estimator, groups=groups)
        if estimator == "systematic":
            gm = means.reshape(groups, -1).mean(1)
            mean, se = float(gm.mean()), (units.mean_and_stderr(gm)[1] if groups > 1 else math.nan)
            how = (f"systematic t: {groups} independent groups of {n_repeats // groups} evenly spaced passes; "
                   "s.e. over group means")
        elif n_repeats > 1:
            mean, se = units.mean_and_stderr(means)
            how = f"mean +- s.e. over {n_repeats} passes"
        else:
            mean, se = float(means[0]), units.mean_and_stderr(per_ex)[1] if per_ex.size > 1 else math.nan
            how = "one pass; s.e. over examples"
        rows.append(results.make_row(
            method=method.label, dataset=spec.name, split=split, metric="nll",
            # None = continuous time, or a discrete-time model's full trained grid of T steps
            n_steps=(math.inf if discrete_T is None else float(discrete_T)) if n is None else float(n),
            value=float(units.nats_to(mean, unit, spec.ndim)), stderr=float(units.nats_to(se, unit, spec.ndim)),
            unit=unit, bound="<=", n_repeats=n_repeats, n_examples=count, n_dims=spec.ndim, seed=seed,
            protocol="; ".join(p for p in (how, "one t and noise draw per example per pass", protocol,
                                           "; ".join(f"{k}: {v}" for k, v in spec.protocol.items())) if p),
        ))
    return rows


@torch.no_grad()
def null_model_rows(data, *, split: str = "test", max_examples: int | None = None, seed: int = 0,
                    unit: str | None = None) -> list[dict]:
    """The exact NLL of the data under an independent-dimensions null model, as a reference row.

    continuous: an isotropic unit Gaussian N(0, I) (Sohl-Dickstein's L_null; meaningful for data scaled to
    unit variance); discretised / discrete: a per-dimension categorical fitted on the train split with
    add-one smoothing (for binary data: independent Bernoullis at the data mean).
    """
    spec = data.spec
    unit = unit or units.default_unit(spec.kind, spec.name)
    if spec.kind == "continuous":
        fit = None
    else:
        K = spec.num_classes
        counts = torch.ones(spec.ndim, K, dtype=torch.float64)
        for x in data.batches("train", 1000, seed=seed, shuffle=False, drop_last=False):
            idx = _class_index(x, spec).reshape(x.shape[0], -1)
            counts.scatter_add_(1, idx.T, torch.ones(idx.T.shape, dtype=torch.float64))
        fit = (counts / counts.sum(1, keepdim=True)).log()
    vals = []
    limit = max_examples if max_examples is not None else data.num_examples(split)
    for x in data.batches(split, 1000, seed=seed, shuffle=False, drop_last=False):
        x = x[: limit - sum(v.numel() for v in vals)]
        if x.shape[0] == 0:
            break
        if fit is None:
            f = x.double().reshape(x.shape[0], -1)
            v = 0.5 * (f**2).sum(1) + 0.5 * f.shape[1] * math.log(2 * math.pi)
        else:
            idx = _class_index(x, spec).reshape(x.shape[0], -1)
            v = -fit.gather(1, idx.T).T.sum(1)
        vals.append(v)
    v = torch.cat(vals).numpy()
    mean, se = units.mean_and_stderr(v)
    desc = ("isotropic unit Gaussian N(0, I)" if fit is None else
            "independent per-dimension categorical fitted on train (add-one smoothing)")
    return [results.make_row(method="null", dataset=spec.name, split=split, metric="nll", n_steps=math.nan,
                 value=float(units.nats_to(mean, unit, spec.ndim)), stderr=float(units.nats_to(se, unit, spec.ndim)),
                 unit=unit, bound="=", n_repeats=1, n_examples=len(v), n_dims=spec.ndim, seed=seed,
                 protocol=f"null model: {desc}; s.e. over examples")]


def _class_index(x: torch.Tensor, spec) -> torch.Tensor:
    from suite.data.base import index_from_bin_centres

    if spec.kind == "discretised":
        return index_from_bin_centres(x, spec.num_classes)
    return x.long()
