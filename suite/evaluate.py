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
               groups: int = 1, start: int = 0, keep_all: bool = False):
    """Returns (per-pass mean NLL bound in nats per example, shape (n_repeats,); the first pass's
    per-example values, for the single-pass standard error; the number of examples per pass).

    `start`: the index of the first pass (passes start..start+n_repeats-1 draw exactly the numbers they
    would draw in one longer call, so passes can be added later); `keep_all`: the second value is then
    every pass's per-example values, shape (n_repeats, examples), in the split's order."""
    rank, world = _world()
    if estimator not in ("plain", "systematic"):
        raise ValueError(f"estimator must be 'plain' or 'systematic', got {estimator!r}")
    if estimator == "systematic" and (groups < 1 or n_repeats % groups):
        raise ValueError(f"systematic estimator: n_repeats={n_repeats} must be a positive multiple of groups={groups}")
    per_group = n_repeats // groups if estimator == "systematic" else 1
    if estimator == "systematic" and start % per_group:
        raise ValueError(f"systematic estimator: start={start} must be a multiple of the group size {per_group}")
    was = method.training
    method.eval()
    means, first, every = [], [], []
    limit = max_examples if max_examples is not None else data.num_examples(split)
    bar = tqdm(total=n_repeats, disable=not progress or rank != 0, leave=False,
               desc=f"{method.label} n={n_steps or 'inf'}")
    for r in range(start, start + n_repeats):
        kept = []
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
            if r == start:
                first.append(v)
            if keep_all:
                kept.append(v)
            seen += take * world
        if world > 1:
            dist.all_reduce(total)
        means.append(float(total[0] / total[1]))
        if keep_all:
            every.append(torch.cat(kept) if kept else torch.zeros(0, dtype=torch.float64))
        bar.update(1)
    bar.close()
    method.train(was)
    out = np.asarray(means)
    if keep_all:
        return out, torch.stack(every).numpy(), int(total[1])
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


#: the smallest standard error worth asking for, per reported unit (issue 11: 1 % of the value, or this)
SE_FLOOR = {"bits/dim": 0.01, "BPC": 0.01, "nats/dim": 0.01, "nats/image": 0.5, "nats": 0.5, "bits": 0.01,
            "bits/seq": 0.01}


def se_target(value: float, unit: str) -> float:
    """The standard error a cell must reach to count as resolved, in `unit`: 1 % of |value| or the unit's floor
    (0.01 bits/dim or BPC, 0.5 nats/image, 0.01 bits), whichever is larger."""
    if unit not in SE_FLOOR:
        raise ValueError(f"no standard-error floor for unit {unit!r}; known: {sorted(SE_FLOOR)}")
    return max(0.01 * abs(value), SE_FLOOR[unit])


def _gather(a: np.ndarray, axis: int) -> np.ndarray:
    rank, world = _world()
    if world == 1:
        return a
    parts = [None] * world
    dist.all_gather_object(parts, a)
    return np.concatenate(parts, axis=axis)  # shards in rank order: the same order for every method


def evaluate_resolved(method, data, *, n_steps_list=(None,), split: str = "test", batch_size: int = 100,
                      max_examples: int | None = None, seed: int = 0, device: torch.device | str = "cpu",
                      unit: str | None = None, group: int = 4, min_groups: int = 1, max_groups: int = 8,
                      protocol: str = "", progress: bool = False) -> tuple[list[dict], dict]:
    """Rows whose standard errors are resolved, and every example's estimate (for paired comparisons).

    Per step count, passes are added in groups of `group` systematic-t passes (`estimator="systematic"`: within
    a group each example sees `group` evenly spaced times) until the standard error is at most `se_target`
    or `max_groups` groups are spent. Each example's estimate is the mean of its passes; the value is the mean
    over examples and the standard error is that of the mean over examples (ddof 1): it counts the spread of
    the data and the Monte-Carlo noise together, so it is the error of the bound on the data distribution, not
    only on this split. Every method of a comparison evaluated with the same `seed` sees the same examples
    and the same random-number streams (common random numbers): differences between methods, or between n
    and 2n of one method, are estimated paired, example by example (suite/compare.py).

    Returns (rows, {n_steps as float: per-example estimates in nats, shape (examples,)})."""
    spec = data.spec
    unit = unit or units.default_unit(spec.kind, spec.name)
    if group < 1 or min_groups < 1 or max_groups < min_groups:
        raise ValueError(f"evaluate_resolved: need group >= 1 and 1 <= min_groups <= max_groups, got group={group}, "
                         f"min_groups={min_groups}, max_groups={max_groups}")
    rows, per_example = [], {}
    discrete_T = method.num_steps
    for n in n_steps_list:
        if discrete_T is not None and n is not None and n > discrete_T:
            continue
        if discrete_T is not None and n == discrete_T and None in n_steps_list:
            continue
        passes, g = [], 0
        while True:
            _, vals, count = nll_passes(method, data, split=split, n_steps=n, n_repeats=group, batch_size=batch_size,
                                        max_examples=max_examples, seed=seed, device=device, progress=progress,
                                        estimator="systematic", groups=1, start=g * group, keep_all=True)
            passes.append(_gather(vals, axis=1))
            g += 1
            m = np.concatenate(passes).mean(0)
            mean, se = units.mean_and_stderr(m)
            target = units.to_nats(se_target(units.nats_to(mean, unit, spec.ndim), unit), unit, spec.ndim)
            if g >= max_groups or (g >= min_groups and se <= target):
                break
        key = (math.inf if discrete_T is None else float(discrete_T)) if n is None else float(n)
        per_example[key] = m
        met = "met" if se <= target else "NOT met"
        how = (f"{g} group(s) of {group} systematic-t passes (each example sees {group} evenly spaced times per "
               f"group); value: mean over {m.size} examples of each example's mean over {g * group} passes; s.e. "
               f"over examples (data and Monte-Carlo together); s.e. target max(1 %, {SE_FLOOR[unit]} {unit}) "
               f"{met}; common random numbers across methods (seed {seed})")
        rows.append(results.make_row(
            method=method.label, dataset=spec.name, split=split, metric="nll", n_steps=key,
            value=float(units.nats_to(mean, unit, spec.ndim)), stderr=float(units.nats_to(se, unit, spec.ndim)),
            unit=unit, bound="<=", n_repeats=g * group, n_examples=int(m.size), n_dims=spec.ndim, seed=seed,
            protocol="; ".join(p for p in (how, protocol, "; ".join(f"{k}: {v}" for k, v in spec.protocol.items()))
                               if p)))
    return rows, per_example


def exact_nll_of(data, split: str, max_examples: int | None = None) -> np.ndarray | None:
    """The exact -ln p (nats) of the split's first `max_examples` examples in evaluation order, or None when the
    data set has no known truth (suite/data/truth)."""
    from suite.data.truth import has_exact_nll

    if not has_exact_nll(data):
        return None
    v = np.asarray(data.exact_nll(split), dtype=np.float64)
    return v[:max_examples] if max_examples is not None else v


@torch.no_grad()
def null_model_values(data, *, split: str = "test", max_examples: int | None = None, seed: int = 0
                      ) -> tuple[np.ndarray, str]:
    """Each example's exact NLL (nats) under an independent-dimensions null model, in evaluation order, and the
    model in words.

    continuous: an isotropic unit Gaussian N(0, I) (Sohl-Dickstein's L_null; meaningful for data scaled to
    unit variance); discretised / discrete: a per-dimension categorical fitted on the train split with
    add-one smoothing (for binary data: independent Bernoullis at the data mean).
    """
    spec = data.spec
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
    desc = ("isotropic unit Gaussian N(0, I)" if fit is None else
            "independent per-dimension categorical fitted on train (add-one smoothing)")
    return torch.cat(vals).numpy(), desc


def null_model_rows(data, *, split: str = "test", max_examples: int | None = None, seed: int = 0,
                    unit: str | None = None) -> list[dict]:
    """The exact NLL of the data under the independent-dimensions null model (`null_model_values`), as a row."""
    spec = data.spec
    unit = unit or units.default_unit(spec.kind, spec.name)
    v, desc = null_model_values(data, split=split, max_examples=max_examples, seed=seed)
    mean, se = units.mean_and_stderr(v)
    return [results.make_row(method="null", dataset=spec.name, split=split, metric="nll", n_steps=math.nan,
                 value=float(units.nats_to(mean, unit, spec.ndim)), stderr=float(units.nats_to(se, unit, spec.ndim)),
                 unit=unit, bound="=", n_repeats=1, n_examples=len(v), n_dims=spec.ndim, seed=seed,
                 protocol=f"null model: {desc}; s.e. over examples")]


def truth_rows(data, *, split: str = "test", max_examples: int | None = None, seed: int = 0,
               unit: str | None = None) -> list[dict]:
    """The exact NLL of the data under the model that generated them (suite/data/truth), as a row; [] when the
    data set has no known truth."""
    v = exact_nll_of(data, split, max_examples)
    if v is None:
        return []
    spec = data.spec
    unit = unit or units.default_unit(spec.kind, spec.name)
    mean, se = units.mean_and_stderr(v)
    return [results.make_row(method="truth", dataset=spec.name, split=split, metric="nll", n_steps=math.nan,
                 value=float(units.nats_to(mean, unit, spec.ndim)), stderr=float(units.nats_to(se, unit, spec.ndim)),
                 unit=unit, bound="=", n_repeats=1, n_examples=len(v), n_dims=spec.ndim, seed=seed,
                 protocol=f"exact -ln p under the generating model: {spec.protocol['exact_nll']}; s.e. over examples")]


def _class_index(x: torch.Tensor, spec) -> torch.Tensor:
    from suite.data.base import index_from_bin_centres

    if spec.kind == "discretised":
        return index_from_bin_centres(x, spec.num_classes)
    return x.long()
