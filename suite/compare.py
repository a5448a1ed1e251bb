"""Comparisons a reviewer can check: convergence, gaps to the truth, paired differences, claims with verdicts.

The bench writes, per comparison and method, every test example's bound estimate at every step count
(`write_examples`: results/<scale>/examples/<comparison>__<method>.npz) and, per comparison, the exact NLL
of the same examples under the null model and, where the data set knows it, under the model that generated
the data (`<comparison>__reference.npz`). All methods of a comparison are evaluated on the same examples
with the same random-number streams (suite/evaluate.py evaluate_resolved), so every difference here is
estimated *paired*: d_i = a_i - b_i per example, mean d with standard error sd(d) / sqrt(N). The spread of
the data cancels, which is what makes a difference resolvable at all on a few hundred examples.

Marks (in every table of the scale, suite/tables.py):
  ‡  still falling: the EMA validation bound fell by more than max(1 % of its value, the unit's s.e. floor)
     over the last quarter of the updates (`convergence`);
  ✗  not below the null model: the paired difference to the independent-dimensions null model is not
     significantly negative (95 %, one-sided);
  §  standard error above the target max(1 % of the value, the unit's floor) (suite/evaluate.py se_target).
A difference or claim that involves a run marked ‡ or ✗ is reported but gets no ranking: its verdict is
"not resolved at this budget".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from suite import units
from suite.evaluate import SE_FLOOR, se_target

Z95 = 1.959963984540054  # two-sided 95 %
Z95_ONE = 1.6448536269514722  # one-sided 95 %
FALLING = "‡"
AT_NULL = "✗"
UNRESOLVED_SE = "§"
LAST_FRACTION = 0.25
MARKS_TEXT = (f"{FALLING} still falling (EMA validation bound fell by more than max(1 %, the unit's s.e. floor) over "
              f"the last {LAST_FRACTION:.0%} of updates); {AT_NULL} not significantly below the null model "
              f"(paired, one-sided 95 %); {UNRESOLVED_SE} s.e. above its target max(1 % of the value, "
              + ", ".join(f"{v:g} {u}" for u, v in SE_FLOOR.items() if u in ("bits/dim", "BPC", "nats/image", "bits"))
              + "). A ranking involving a ‡ or ✗ run is 'not resolved at this budget'.")


# ---------------------------------------------------------------- convergence


def convergence(history: list[dict], unit: str, n_dims: int, key: str = "val_bound_ema") -> dict:
    """Whether the validation bound is still falling at the end of training.

    Criterion: with v(s) the EMA validation bound (nats per example, the same examples and random numbers at
    every validation), s_end the last validation step and s_0 the last validation step at or before
    (1 - LAST_FRACTION) s_end, the run is *still falling* when v(s_0) - v(s_end) exceeds
    max(1 % of |v(s_end)|, the unit's standard-error floor). Too few validation points: unknown (None).
    """
    pts = [(h["step"], h[key]) for h in history if key in h and h[key] is not None and math.isfinite(h[key])]
    out = {"criterion": f"{key} fell by more than max(1 %, {SE_FLOOR.get(unit, 0.01)} {unit}) over the last "
                        f"{LAST_FRACTION:.0%} of updates", "still_falling": None}
    if len(pts) < 2:
        return out
    s_end, v_end = pts[-1]
    before = [(s, v) for s, v in pts if s <= (1 - LAST_FRACTION) * s_end]
    if not before:
        return out
    s0, v0 = before[-1]
    threshold = units.to_nats(se_target(units.nats_to(v_end, unit, n_dims), unit), unit, n_dims)
    out.update(still_falling=bool(v0 - v_end > threshold), from_step=int(s0), to_step=int(s_end),
               drop_nats=float(v0 - v_end), threshold_nats=float(threshold), final_val_nats=float(v_end))
    return out


# ---------------------------------------------------------------- per-example files


def _key(n: float) -> str:
    return "n=inf" if n == math.inf else f"n={int(n)}"


def write_examples(path: str | Path, per_example: dict[float, np.ndarray], meta: dict) -> Path:
    """One method's per-example estimates (nats) per step count, with its metadata, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, meta=np.array(json.dumps(meta, sort_keys=True, default=str)),
             **{_key(n): np.asarray(v, dtype=np.float64) for n, v in per_example.items()})
    tmp.replace(path)
    return path


def read_examples(path: str | Path) -> tuple[dict, dict[float, np.ndarray]]:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        arrays = {(math.inf if k == "n=inf" else float(k[2:])): z[k] for k in z.files if k.startswith("n=")}
    return meta, arrays


# ---------------------------------------------------------------- paired statistics


@dataclass(frozen=True)
class Paired:
    mean: float  # nats per example
    se: float

    @property
    def z(self) -> float:
        return self.mean / self.se if self.se > 0 else (math.inf if self.mean else 0.0) * np.sign(self.mean)

    def significant(self) -> bool:
        return abs(self.mean) > Z95 * self.se


def paired(a: np.ndarray, b: np.ndarray) -> Paired:
    """Mean and standard error of a - b over examples (both in the same example order)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired difference of arrays of shapes {a.shape} and {b.shape}: not the same examples")
    m, se = units.mean_and_stderr(a - b)
    return Paired(m, 0.0 if math.isnan(se) else se)


# ---------------------------------------------------------------- the analysis of a scale


def _load(examples_dir: Path):
    """{(comparison, method): (meta, {n: per-example})}, {comparison: {"null": ..., "truth": ...}}."""
    runs, refs = {}, {}
    for p in sorted(examples_dir.glob("*.npz")):
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("kind") == "reference":
                refs[meta["comparison"]] = {k: z[k] for k in ("null", "truth") if k in z.files}
                continue
        runs[meta["comparison"], meta["method"]] = read_examples(p)
    return runs, refs


def _conv(u: str, n_dims: int, v: float) -> float:
    return float(units.nats_to(v, u, n_dims))


def cells(examples_dir: str | Path) -> pd.DataFrame:
    """One row per (comparison, method, n steps): value, s.e., gap to the truth, difference to the null model
    (both paired), and the marks. Values in the comparison's unit."""
    runs, refs = _load(Path(examples_dir))
    rows = []
    for (comp, m), (meta, arrays) in sorted(runs.items()):
        u, D = meta["unit"], int(meta["n_dims"])
        truth, null = refs.get(comp, {}).get("truth"), refs.get(comp, {}).get("null")
        best = max(arrays)
        for n, v in sorted(arrays.items()):
            mean, se = units.mean_and_stderr(v)
            row = {"comparison": comp, "dataset": meta["dataset"], "method": m, "n_steps": n, "unit": u,
                   "value": _conv(u, D, mean), "stderr": _conv(u, D, se), "n_examples": v.size,
                   "n_passes": meta.get("passes", {}).get(_key(n)), "best_n": n == best,
                   "still_falling": meta.get("convergence", {}).get("still_falling"),
                   "lr": meta.get("lr"), "se_met": se <= units.to_nats(se_target(_conv(u, D, mean), u), u, D)}
            if truth is not None:
                g = paired(v, truth)
                row.update(gap=_conv(u, D, g.mean), gap_se=_conv(u, D, g.se))
            if null is not None:
                d = paired(v, null)
                row.update(vs_null=_conv(u, D, d.mean), vs_null_se=_conv(u, D, d.se),
                           beats_null=bool(d.mean + Z95_ONE * d.se < 0))
            rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df["marks"] = [_marks(r) for r in df.to_dict("records")]
    return df


def _is(v, want: bool) -> bool:
    """v (a bool, numpy bool, None or NaN) is known and equals `want`."""
    return v is not None and not (isinstance(v, float) and math.isnan(v)) and bool(v) is want


def _marks(r: dict) -> str:
    s = ""
    if _is(r.get("still_falling"), True):
        s += FALLING
    if _is(r.get("beats_null"), False):
        s += AT_NULL
    if _is(r.get("se_met"), False):
        s += UNRESOLVED_SE
    return s


def write_reference(path: str | Path, comparison: str, dataset: str, unit: str, n_dims: int,
                    null: np.ndarray, truth: np.ndarray | None, null_model: str) -> Path:
    """The null model's (and where known the truth's) exact NLL of the comparison's evaluated examples."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"kind": "reference", "comparison": comparison, "dataset": dataset, "unit": unit, "n_dims": n_dims,
            "null_model": null_model, "has_truth": truth is not None}
    tmp = path.with_name(path.name + ".tmp.npz")
    arrays = {"null": np.asarray(null, np.float64)}
    if truth is not None:
        arrays["truth"] = np.asarray(truth, np.float64)
    np.savez(tmp, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
    tmp.replace(path)
    return path



def _run_mark(cell: pd.Series | None, name: str) -> str | None:
    """Why a run's cell cannot carry a ranking (None: it can)."""
    if cell is None:
        return f"{name} not run"
    why = []
    if _is(cell.get("still_falling"), True):
        why.append(f"{name} still falling {FALLING}")
    if _is(cell.get("beats_null"), False):
        why.append(f"{name} not below the null model {AT_NULL}")
    return "; ".join(why) or None


def _best(c: pd.DataFrame, comp: str, m: str):
    d = c[(c["comparison"] == comp) & (c["method"] == m) & c["best_n"]]
    return d.iloc[0] if len(d) else None


def _rank(d: Paired, a: str, b: str, blockers: list[str]) -> str:
    if blockers:
        return "not resolved at this budget (" + "; ".join(blockers) + ")"
    if not d.significant():
        return "no significant difference (|d| < 1.96 s.e.)"
    return f"{a} < {b}" if d.mean < 0 else f"{a} > {b}"


def differences(examples_dir: str | Path, c: pd.DataFrame | None = None) -> pd.DataFrame:
    """Paired differences that the tables call out: every pair of methods of a comparison at their headline
    step counts (continuous time, or a discrete-time model's full grid) and at each step count both have, and
    each method's consecutive step counts (n_j -> n_j+1). d = a - b in the comparison's unit (lower is better),
    with its paired standard error, z and the ranking it supports."""
    examples_dir = Path(examples_dir)
    runs, _ = _load(examples_dir)
    c = cells(examples_dir) if c is None else c
    rows = []
    comps = sorted({k[0] for k in runs})
    for comp in comps:
        methods = [m for (cc, m) in runs if cc == comp]
        for i, a in enumerate(methods):
            ma, xa = runs[comp, a]
            u, D = ma["unit"], int(ma["n_dims"])
            ca = _best(c, comp, a)
            for b in methods[i + 1:]:
                mb, xb = runs[comp, b]
                cb = _best(c, comp, b)
                pairs = [(max(xa), max(xb))] + [(n, n) for n in sorted(set(xa) & set(xb)) if n != max(xa) or n != max(xb)]
                for na, nb in pairs:
                    d = paired(xa[na], xb[nb])
                    blockers = [w for w in (_run_mark(ca, a), _run_mark(cb, b)) if w]
                    rows.append({"comparison": comp, "kind": "methods", "a": a, "n_a": na, "b": b, "n_b": nb,
                                 "unit": u, "diff": _conv(u, D, d.mean), "se": _conv(u, D, d.se), "z": d.z,
                                 "significant": d.significant(), "ranking": _rank(d, a, b, blockers)})
            ns = sorted(xa)
            for n0, n1 in zip(ns, ns[1:], strict=False):
                d = paired(xa[n1], xa[n0])
                blockers = [w for w in (_run_mark(ca, a),) if w]
                rows.append({"comparison": comp, "kind": "steps", "a": a, "n_a": n1, "b": a, "n_b": n0, "unit": u,
                             "diff": _conv(u, D, d.mean), "se": _conv(u, D, d.se), "z": d.z,
                             "significant": d.significant(),
                             "ranking": _rank(d, f"n={_key(n1)[2:]}", f"n={_key(n0)[2:]}", blockers)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the papers' claims, checked

#: (source, claim, kind, arguments). kinds: "steps" (comparison, method): the bound does not increase with n;
#: "better" (comparison, a, b): a's bound below b's; "K" (comparison, method, published K, tolerance): Sohl-
#: Dickstein's K = -NLL in bits within tolerance of the published value; "above_truth": no bound below the truth.
CLAIMS = [
    ("BFN Tables 2, 3, 5", "the BFN bound does not increase with the number of steps n", "steps",
     [("mnist_binarized", "bfn_discrete"), ("text", "bfn_discrete"), ("mnist_16", "bfn_continuous"),
      ("mnist_16", "bfn_discretised"), ("mnist_256", "bfn_continuous"), ("mnist_256", "bfn_discretised")]),
    ("BFN Table 3", "at 16 bins the discretised BFN beats the continuous BFN", "better",
     [("mnist_16", "bfn_discretised", "bfn_continuous")]),
    ("BFN Table 3", "at 256 bins the discretised BFN beats the continuous BFN", "better",
     [("mnist_256", "bfn_discretised", "bfn_continuous")]),
    ("BFN Table 4", "BFN beats multinomial diffusion on text", "better",
     [("text", "bfn_discrete", "multinomial_diffusion")]),
    ("BFN Table 4", "BFN beats masked (absorbing) diffusion on text (D3PM mask: 1.45 BPC against 1.41)", "better",
     [("text", "bfn_discrete", "masked_diffusion")]),
    ("BFN Table 1 / Sohl-Dickstein", "BFN beats binomial diffusion on binarised images", "better",
     [("mnist_binarized", "bfn_discrete", "sohl_binomial")]),
    ("Sohl-Dickstein Table 1", "binary heartbeat: K = -2.414 bits/seq, reproduced within 0.1 bits", "K",
     [("heartbeat", "sohl_binomial", -2.414, 0.1)]),
    ("Sohl-Dickstein Table 1", "swiss roll: K = 2.35 bits, reproduced within 0.3 bits", "K",
     [("swiss_roll", "sohl_gaussian", 2.35, 0.3)]),
    ("soundness", "no method's bound lies below the exact NLL (where the truth is known)", "above_truth", []),
]


def _fmt(v: float, se: float, unit: str) -> str:
    digits = 2 if unit in ("nats/image", "nats") else 3
    return f"{v:+.{digits}f} ± {se:.{digits}f} {unit}"


def claims(examples_dir: str | Path, c: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each claim of CLAIMS with its evidence and a verdict: holds / does not hold / not resolved at this budget.
    Claims about comparisons that were not run are left out."""
    examples_dir = Path(examples_dir)
    runs, refs = _load(examples_dir)
    c = cells(examples_dir) if c is None else c
    out = []
    for source, text, kind, args in CLAIMS:
        if kind == "steps":
            for comp, m in args:
                if (comp, m) not in runs:
                    continue
                meta, x = runs[comp, m]
                u, D = meta["unit"], int(meta["n_dims"])
                ns = sorted(x)
                ups = [(n0, n1, paired(x[n1], x[n0])) for n0, n1 in zip(ns, ns[1:], strict=False)]
                overall = paired(x[ns[-1]], x[ns[0]])
                sig_up = [(n0, n1, d) for n0, n1, d in ups if d.mean > Z95 * d.se]
                ev = (f"L(n={_key(ns[-1])[2:]}) - L(n={_key(ns[0])[2:]}) = {_fmt(_conv(u, D, overall.mean), _conv(u, D, overall.se), u)}; "
                      + ", ".join(f"{_key(n0)[2:]}→{_key(n1)[2:]}: {_conv(u, D, d.mean):+.3g} (z {d.z:+.1f})"
                                  for n0, n1, d in ups))
                block = _run_mark(_best(c, comp, m), m)
                if sig_up:
                    verdict = "does not hold"
                elif block:
                    verdict = f"not resolved at this budget ({block})"
                elif overall.mean < -Z95 * overall.se:
                    verdict = "holds"
                else:
                    verdict = "not resolved at this budget (no significant change over the sweep)"
                out.append({"source": source, "claim": text, "where": f"{comp}: {m}", "evidence": ev,
                            "verdict": verdict})
        elif kind == "better":
            for comp, a, b in args:
                if (comp, a) not in runs or (comp, b) not in runs:
                    continue
                ma, xa = runs[comp, a]
                _, xb = runs[comp, b]
                u, D = ma["unit"], int(ma["n_dims"])
                na, nb = max(xa), max(runs[comp, b][1])
                d = paired(xa[na], xb[nb])
                blockers = [w for w in (_run_mark(_best(c, comp, a), a), _run_mark(_best(c, comp, b), b)) if w]
                if blockers:
                    verdict = "not resolved at this budget (" + "; ".join(blockers) + ")"
                elif d.mean < -Z95 * d.se:
                    verdict = "holds"
                elif d.mean > Z95 * d.se:
                    verdict = "does not hold"
                else:
                    verdict = "not resolved at this budget (|d| < 1.96 s.e.)"
                out.append({"source": source, "claim": text, "where": f"{comp}: {a} (n={_key(na)[2:]}) - {b} "
                            f"(n={_key(nb)[2:]})", "evidence": f"d = {_fmt(_conv(u, D, d.mean), _conv(u, D, d.se), u)}, "
                            f"z {d.z:+.1f}", "verdict": verdict})
        elif kind == "K":
            for comp, m, pub, tol in args:
                if (comp, m) not in runs:
                    continue
                meta, x = runs[comp, m]
                D = int(meta["n_dims"])
                v, se = units.mean_and_stderr(x[max(x)])
                K, K_se = -float(units.nats_to(v, "bits", D)), float(units.nats_to(se, "bits", D))
                off = abs(K - pub)
                # within the tolerance with 95 % confidence, outside it with 95 % confidence, or neither
                verdict = ("holds" if off + Z95 * K_se <= tol else
                           "does not hold" if off - Z95 * K_se > tol else
                           f"not resolved at this budget (|K - published| = {off:.3f} ± {K_se:.3f} straddles {tol})")
                ev = f"K = {K:.3f} ± {K_se:.3f} bits, published {pub}, |K - published| = {off:.3f}"
                truth = refs.get(comp, {}).get("truth")
                if truth is not None:
                    t, t_se = units.mean_and_stderr(truth)
                    Kt, Kt_se = -float(units.nats_to(t, "bits", D)), float(units.nats_to(t_se, "bits", D))
                    ev += f"; exact K of these data {Kt:.3f}" + (f" ± {Kt_se:.3f}" if Kt_se > 1e-9 else "")
                    if pub - tol > Kt + Z95 * Kt_se:  # every K is a lower bound: at most the truth
                        verdict += (f" (unreachable on these data: the published K - {tol} exceeds their exact K; "
                                    "the paper's data must have been less noisy)")
                out.append({"source": source, "claim": text, "where": f"{comp}: {m}", "evidence": ev,
                            "verdict": verdict})
        elif kind == "above_truth":
            for (comp, m), (meta, x) in sorted(runs.items()):
                truth = refs.get(comp, {}).get("truth")
                if truth is None:
                    continue
                u, D = meta["unit"], int(meta["n_dims"])
                worst = min(((n, paired(v, truth)) for n, v in x.items()), key=lambda t: t[1].mean / max(t[1].se, 1e-300))
                n, g = worst
                verdict = "does not hold" if g.mean < -Z95 * g.se else "holds"
                out.append({"source": source, "claim": text, "where": f"{comp}: {m}",
                            "evidence": f"smallest gap: n={_key(n)[2:]}, bound - truth = "
                            f"{_fmt(_conv(u, D, g.mean), _conv(u, D, g.se), u)}", "verdict": verdict})
    return pd.DataFrame(out, columns=["source", "claim", "where", "evidence", "verdict"])


def write_all(examples_dir: str | Path, out_dir: str | Path) -> tuple[list[Path], pd.DataFrame]:
    """comparisons.md/.csv (paired differences) and claims.md/.csv beside the tables; returns (files, cells)."""
    from suite.tables import markdown

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    c = cells(examples_dir)
    if c.empty:
        return [], c
    diffs = differences(examples_dir, c)
    cl = claims(examples_dir, c)
    c.to_csv(out_dir / "cells.csv", index=False, float_format="%.6g")
    diffs.to_csv(out_dir / "comparisons.csv", index=False, float_format="%.6g")
    cl.to_csv(out_dir / "claims.csv", index=False)
    shown = diffs.copy()
    shown["a"] = [f"{a} (n={_key(n)[2:]})" for a, n in zip(diffs["a"], diffs["n_a"], strict=True)]
    shown["b"] = [f"{b} (n={_key(n)[2:]})" for b, n in zip(diffs["b"], diffs["n_b"], strict=True)]
    shown["a - b"] = [_fmt(d, s, u) for d, s, u in zip(diffs["diff"], diffs["se"], diffs["unit"], strict=True)]
    shown["z"] = diffs["z"].map(lambda z: f"{z:+.1f}")
    shown["sig. 95 %"] = diffs["significant"].map(lambda s: "yes" if s else "no")
    parts = []
    for comp, g in shown.groupby("comparison", sort=True):
        for kind, title in (("methods", "methods against each other"), ("steps", "each method against fewer steps")):
            gg = g[g["kind"] == kind]
            if len(gg):
                parts.append(f"## {comp}: {title}\n\n" + markdown(gg[["a", "b", "a - b", "z", "sig. 95 %", "ranking"]]))
    (out_dir / "comparisons.md").write_text(
        "# Paired differences (common examples and random numbers; lower is better)\n\n"
        "d = a - b per test example, mean ± standard error over examples; significant when |d| > 1.96 s.e. "
        "(per comparison, not corrected for multiplicity). " + MARKS_TEXT + "\n\n" + "\n\n".join(parts) + "\n")
    (out_dir / "claims.md").write_text(
        "# The papers' findings, checked at this budget\n\n"
        "Verdicts: holds / does not hold / not resolved at this budget (a run still falling or at the null "
        "model, or a difference inside 1.96 paired standard errors). Evidence: paired differences over the same "
        "test examples (suite/compare.py). " + MARKS_TEXT + "\n\n" + markdown(cl) + "\n")
    return [out_dir / f for f in ("cells.csv", "comparisons.md", "comparisons.csv", "claims.md", "claims.csv")], c
