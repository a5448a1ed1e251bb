"""`bfnbench tables`: the BFN paper's Tables 1-5 and Sohl-Dickstein et al.'s Table 1, regenerated.

Each table has the paper's layout; each cell shows the published number beside this suite's (mean +-
standard error, converted to the paper's unit by suite/units.py), and names the data actually used:
a stand-in (embedded MNIST digits for binarised MNIST or CIFAR-10, embedded Shakespeare for text8) is
labelled as such. Published numbers marked `recalled` in paper_numbers.csv carry a dagger.
Written as Markdown and LaTeX by `markdown` and `latex` below, the one formatter of the suite's tables
(bench's variance table included).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from suite import units
from suite.compare import MARKS_TEXT
from suite.results import load_reference

#: suite method -> (paper model name, variant) for matching published rows
METHOD_MODEL = {
    "bfn_continuous": ("BFN", "continuous"),
    "bfn_discretised": ("BFN", "discretised"),
    "bfn_discrete": ("BFN", ""),
    "vdm": ("VDM", ""),
    "ddpm": ("Improved DDPM", ""),
    "multinomial_diffusion": ("Multinomial Diffusion", "diffusion"),
    "masked_diffusion": ("Masked diffusion (MD4-style)", ""),
    "sohl_gaussian": ("Gaussian diffusion", ""),
    "sohl_binomial": ("Binomial diffusion", ""),
}

#: paper data set -> (unit, data sets of this suite that measure it, the real one first)
PAPER_DATA = {
    "binarized_mnist": ("nats/image", ["binarized_mnist", "mnist_embedded_binarized", "mnist_mixture_binarized"]),
    "cifar10_8bit": ("bits/dim", ["cifar10_256", "mnist_embedded_256", "mnist_256", "mnist_mixture_256"]),
    "cifar10_4bit": ("bits/dim", ["cifar10_16", "mnist_embedded_16", "mnist_16", "mnist_mixture_16"]),
    "text8": ("BPC", ["text8", "text_embedded", "text_hmm"]),
    "swiss_roll": ("bits", ["swiss_roll"]),
    "binary_heartbeat": ("bits/seq", ["binary_heartbeat"]),
}
DAGGER = "†"


def _fmt(v: float, se: float = math.nan, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    s = f"{v:.{digits}f}"
    if se is not None and not math.isnan(se):
        # a standard error below the last shown digit keeps one significant figure
        s += f" ± {se:.{digits}f}" if se >= 0.5 * 10**-digits or se == 0 else f" ± {se:.1g}"
    return s


#: the per-cell analysis of suite/compare.py (gaps, marks) of the tables being built; None: plain cells
_CELLS: pd.DataFrame | None = None


def _cell(dataset: str, method: str, n_steps: float) -> dict | None:
    if _CELLS is None or _CELLS.empty:
        return None
    d = _CELLS[(_CELLS["dataset"] == dataset) & (_CELLS["method"] == method) & (_CELLS["n_steps"] == n_steps)]
    return d.iloc[-1].to_dict() if len(d) else None


def _digits(unit: str) -> int:
    return 3 if unit in ("bits/dim", "BPC", "bits", "bits/seq") else 2


def _ours(df: pd.DataFrame, paper_dataset: str, method: str, n_steps: float, what: str = "value") -> tuple[str, str]:
    """This suite's cell for (paper data set, method, n steps) and the data set that produced it, with its marks
    (suite/compare.py); `what="gap"`: the paired gap bound - truth instead (— where the truth is unknown)."""
    unit, names = PAPER_DATA[paper_dataset]
    d = df[(df["metric"] == "nll") & (df["method"] == method) & (df["n_steps"] == n_steps)]
    for name in names:
        row = d[d["dataset"] == name]
        if len(row):
            r = row.iloc[-1]
            c = _cell(name, method, n_steps)
            if what == "gap":
                if c is None or "gap" not in c or pd.isna(c.get("gap")):
                    return "—", name
                v, se, u = c["gap"], c["gap_se"], c["unit"]
                return _fmt(units.convert(v, u, unit, int(r["n_dims"])), units.convert(se, u, unit, int(r["n_dims"])),
                            _digits(unit)), name
            v = units.convert(float(r["value"]), r["unit"], unit, int(r["n_dims"]))
            se = units.convert(float(r["stderr"]), r["unit"], unit, int(r["n_dims"]))
            marks = (c or {}).get("marks") or ""
            return _fmt(v, se, _digits(unit)) + (f" {marks}" if marks else ""), name
    return "—", ""


def _truth(df: pd.DataFrame, paper_dataset: str, datasets: set[str]) -> tuple[str, str]:
    """The exact NLL of the test examples under the generating model, for the first of `datasets` that has one."""
    unit, names = PAPER_DATA[paper_dataset]
    t = df[(df["metric"] == "nll") & (df["method"] == "truth")]
    for name in names:
        row = t[t["dataset"] == name]
        if name in datasets and len(row):
            r = row.iloc[-1]
            v = units.convert(float(r["value"]), r["unit"], unit, int(r["n_dims"]))
            se = units.convert(float(r["stderr"]), r["unit"], unit, int(r["n_dims"]))
            return _fmt(v, se, _digits(unit)), name
    return "", ""


def _pub(row) -> str:
    """A published number exactly as printed in the paper (paper_numbers.csv), † if recalled."""
    s = str(row["value_text"]) + (f" ± {row['stderr_text']}" if row["stderr_text"] else "")
    return s + (DAGGER if row["status"] == "recalled" else "")


def _used(name: str) -> str:
    if not name:
        return ""
    real = {v[1][0] for v in PAPER_DATA.values()}
    return name if name in real else f"{name} (stand-in)"


def _steps_label(n: float) -> str:
    return "∞ (continuous)" if n == math.inf else ("" if math.isnan(n) else str(int(n)))


def table_models(df, ref, table: int, paper_dataset: str, methods: list[str]) -> pd.DataFrame:
    """BFN Tables 1 and 4: published models, then this suite's methods (continuous time or their largest n)."""
    pub = ref[(ref["paper"] == "bfn2023") & (ref["table"] == str(table)) & (ref["dataset"] == paper_dataset)]
    rows = [{"model": r["model"] + (f" ({r['variant']})" if r["variant"] else ""), "published": _pub(r),
             "bfnbench": "", "gap = bound - truth": "", "data used": ""} for _, r in pub.iterrows()]
    used_sets = set()
    for m in methods:
        d = df[(df["metric"] == "nll") & (df["method"] == m) & df["dataset"].isin(PAPER_DATA[paper_dataset][1])]
        if d.empty:
            continue
        n = math.inf if (d["n_steps"] == math.inf).any() else float(d["n_steps"].max())
        cell, used = _ours(df, paper_dataset, m, n)
        if used:
            model, variant = METHOD_MODEL.get(m, (m, ""))
            label = f"{model}" + (f" ({variant})" if variant else "") + f" [bfnbench {m}, n={_steps_label(n)}]"
            gap, _ = _ours(df, paper_dataset, m, n, what="gap")
            rows.append({"model": label, "published": "", "bfnbench": cell, "gap = bound - truth": gap,
                         "data used": _used(used)})
            used_sets.add(used)
    truth, used = _truth(df, paper_dataset, used_sets)
    if truth:
        rows.append({"model": "truth: exact -ln p under the generating model", "published": "", "bfnbench": truth,
                     "gap = bound - truth": "0", "data used": _used(used)})
    t = pd.DataFrame(rows)
    if len(t) and not (t["gap = bound - truth"].isin(["", "—"])).all():
        return t
    return t.drop(columns=["gap = bound - truth"]) if len(t) else t


def table_steps(df, ref, table: int, columns: list[tuple[str, str, str]]) -> pd.DataFrame:
    """BFN Tables 2, 3 and 5: rows = n steps; per column (paper data set, variant, method) published | ours."""
    steps = set()
    for pdset, variant, m in columns:
        pub = ref[(ref["paper"] == "bfn2023") & (ref["table"] == str(table)) & (ref["dataset"] == pdset)
                  & (ref["variant"] == variant)]
        steps |= set(pub["n_steps"])
        steps |= set(df[(df["metric"] == "nll") & (df["method"] == m) & df["dataset"].isin(PAPER_DATA[pdset][1])]["n_steps"])
    out, used_sets = [], {}
    for n in sorted(s for s in steps if not math.isnan(s)):
        row = {"n steps": _steps_label(n)}
        for pdset, variant, m in columns:
            key = f"{pdset}{' ' + variant if variant else ''}"
            pub = ref[(ref["paper"] == "bfn2023") & (ref["table"] == str(table)) & (ref["dataset"] == pdset)
                      & (ref["variant"] == variant) & (ref["n_steps"] == n)]
            row[f"{key}: published"] = _pub(pub.iloc[0]) if len(pub) else "—"
            cell, used = _ours(df, pdset, m, n)
            row[f"{key}: bfnbench"] = cell + (f" [{_used(used)}]" if used and used not in PAPER_DATA[pdset][1][:1] else "")
            gap, _ = _ours(df, pdset, m, n, what="gap")
            row[f"{key}: gap"] = gap
            if used:
                used_sets.setdefault(key, set()).add(used)
        out.append(row)
    truth_row, any_truth = {"n steps": "truth"}, False
    for pdset, variant, _m in columns:
        key = f"{pdset}{' ' + variant if variant else ''}"
        truth, used = _truth(df, pdset, used_sets.get(key, set()))
        any_truth |= bool(truth)
        truth_row.update({f"{key}: published": "", f"{key}: bfnbench": truth or "—", f"{key}: gap": ""})
    t = pd.DataFrame(out)
    if any_truth:
        t = pd.concat([t, pd.DataFrame([truth_row])], ignore_index=True)
    gaps = [c for c in t.columns if c.endswith(": gap")]
    empty = [c for c in gaps if t[c].isin(["", "—"]).all()]
    return t.drop(columns=empty)


def table_sohl(df, ref) -> pd.DataFrame:
    """Sohl-Dickstein et al. Table 1: K and K - L_null (bits), published beside ours (higher is better), and where
    the data's exact log-likelihood is known (heartbeat ln 5; swiss roll by quadrature) the truth every K is below
    and the paired gap truth - K (= bound - truth of the NLL)."""
    rows = []
    pub = ref[(ref["paper"] == "sohl2015") & (ref["table"] == "1")]
    for _, r in pub.iterrows():
        note = r["note"]
        gain = note.split("K-L_null = ")[1].split(" ")[0].rstrip(";") if "K-L_null = " in note else "—"
        row = {"data set": r["dataset"], "model": r["model"], "unit": r["unit"],
               "K published": _pub(r), "K - L_null published": gain, "K bfnbench": "—", "K - L_null bfnbench": "—",
               "K truth": "—", "gap = truth - K": "—"}
        m = "sohl_binomial" if "Binomial" in r["model"] else "sohl_gaussian"
        d = df[(df["metric"] == "nll") & (df["method"] == m) & (df["dataset"] == r["dataset"])]
        null = df[(df["metric"] == "nll") & (df["method"] == "null") & (df["dataset"] == r["dataset"])]
        if len(d):
            best = d.sort_values("n_steps").iloc[-1]  # the full grid
            def to_bits(v, best=best):
                return units.convert(float(v), best["unit"], "bits", int(best["n_dims"]))

            c = _cell(r["dataset"], m, float(best["n_steps"]))
            marks = (c or {}).get("marks") or ""
            row["K bfnbench"] = _fmt(-to_bits(best["value"]), to_bits(best["stderr"]), 3) + (f" {marks}" if marks else "")
            if len(null):
                nb = units.convert(float(null.iloc[-1]["value"]), null.iloc[-1]["unit"], "bits", int(best["n_dims"]))
                row["K - L_null bfnbench"] = _fmt(nb - to_bits(best["value"]), to_bits(best["stderr"]), 3)
            truth = df[(df["metric"] == "nll") & (df["method"] == "truth") & (df["dataset"] == r["dataset"])]
            if len(truth):
                t_se = to_bits(truth.iloc[-1]["stderr"])  # 0 where every example has the same truth (heartbeat)
                row["K truth"] = _fmt(-to_bits(truth.iloc[-1]["value"]), t_se if t_se > 1e-9 else math.nan, 3)
            if c is not None and "gap" in c and not pd.isna(c.get("gap")):
                g = units.convert(float(c["gap"]), c["unit"], "bits", int(best["n_dims"]))
                g_se = units.convert(float(c["gap_se"]), c["unit"], "bits", int(best["n_dims"]))
                row["gap = truth - K"] = _fmt(g, g_se, 3)
        rows.append(row)
    t = pd.DataFrame(rows)
    return t.drop(columns=["K truth", "gap = truth - K"]) if len(t) and (t["K truth"] == "—").all() else t


def build_tables(df: pd.DataFrame, ref: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    ref = load_reference() if ref is None else ref
    img = ["bfn_continuous", "bfn_discretised", "vdm", "ddpm", "sohl_gaussian"]
    return {
        "bfn_table1_mnist": table_models(df, ref, 1, "binarized_mnist",
                                         ["bfn_discrete", "sohl_binomial", "multinomial_diffusion", "masked_diffusion"]),
        "bfn_table1_cifar10": table_models(df, ref, 1, "cifar10_8bit", img),
        "bfn_table2_mnist_steps": table_steps(df, ref, 2, [("binarized_mnist", "", "bfn_discrete")]),
        "bfn_table3_cifar10_steps": table_steps(df, ref, 3, [
            ("cifar10_8bit", "continuous", "bfn_continuous"), ("cifar10_8bit", "discretised", "bfn_discretised"),
            ("cifar10_4bit", "continuous", "bfn_continuous"), ("cifar10_4bit", "discretised", "bfn_discretised")]),
        "bfn_table4_text8": table_models(df, ref, 4, "text8", ["bfn_discrete", "multinomial_diffusion", "masked_diffusion"]),
        "bfn_table5_text8_steps": table_steps(df, ref, 5, [("text8", "", "bfn_discrete")]),
        "sohl_table1": table_sohl(df, ref),
    }


TITLES = {
    "bfn_table1_mnist": "BFN Table 1 (binarised MNIST, nats/image, lower is better)",
    "bfn_table1_cifar10": "BFN Table 1 (CIFAR-10 8-bit, bits/dim, lower is better)",
    "bfn_table2_mnist_steps": "BFN Table 2 (binarised MNIST against n steps, nats/image)",
    "bfn_table3_cifar10_steps": "BFN Table 3 (CIFAR-10 against n steps, bits/dim)",
    "bfn_table4_text8": "BFN Table 4 (text8, bits per character)",
    "bfn_table5_text8_steps": "BFN Table 5 (text8 against n steps, BPC)",
    "sohl_table1": "Sohl-Dickstein et al. 2015 Table 1 (K and K - L_null, bits; higher is better)",
}
FOOTER = (f"{DAGGER} recalled: from memory of the paper, not yet checked cell by cell (paper_numbers.csv). "
          "bfnbench cells: mean ± standard error of an upper bound on NLL (MNIST nats/image, images bits/dim, "
          "text BPC); '(stand-in)' names the embedded data set that replaced the paper's. gap: the paired mean of bound - "
          "exact NLL over the same test examples, where the data were sampled from a known model (docs/truth.md).")


# ---------------------------------------------------------------- the one formatter of every table


def markdown(t: pd.DataFrame) -> str:
    """A table as a Markdown grid (pandas/tabulate pipe format, no index); an empty one as "(no rows)"."""
    return t.to_markdown(index=False) if len(t) else "(no rows)"


def latex(t: pd.DataFrame, caption: str, label: str) -> str:
    """A table as a LaTeX tabular with caption and label (special characters escaped); an empty one as a comment."""
    return t.to_latex(index=False, caption=caption, label=label, escape=True) if len(t) else "% no rows\n"


def write_all(df: pd.DataFrame, out_dir: str | Path, ref: pd.DataFrame | None = None,
              cells: pd.DataFrame | None = None) -> list[Path]:
    """Every table as LaTeX and all of them in tables.md. `cells`: suite/compare.py's per-cell analysis (gaps to the
    truth, marks for runs still falling, at the null model, or with unresolved s.e.); without it, plain cells."""
    global _CELLS
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, md = [], []
    _CELLS = cells
    try:
        built = build_tables(df, ref)
    finally:
        _CELLS = None
    for name, t in built.items():
        md.append(f"## {TITLES[name]}\n\n" + markdown(t) + "\n")
        tex = out_dir / f"{name}.tex"
        tex.write_text(latex(t, TITLES[name], f"tab:{name}"))
        written.append(tex)
    p = out_dir / "tables.md"
    marks = f"\n\nMarks: {MARKS_TEXT} Paired differences: comparisons.md; the papers' claims checked: claims.md." \
        if cells is not None and not cells.empty else ""
    p.write_text("# Regenerated tables\n\n" + "\n".join(md) + "\n" + FOOTER + marks + "\n")
    written.append(p)
    return written



VARIANCE_COLUMNS = ["comparison", "method", "n_steps", "unit", "plain", "systematic", "se_ratio"]


def write_variance(df: pd.DataFrame, dest: str | Path, passes: int, groups: int, examples: int) -> Path:
    """The variance study (suite/bench.py variance_study: one row per comparison, method and n steps with columns
    plain, plain_se, systematic, systematic_se, se_ratio) as variance.csv (raw) and variance.md (formatted)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    df.to_csv(dest / "variance.csv", index=False, float_format="%.6g")
    if df.empty:  # nothing trained to study (e.g. `bench --only` of a comparison whose runs have not finished)
        (dest / "variance.md").write_text(
            "# Plain against systematic t\n\nNo finished run to study: train the comparisons first (bfnbench bench).\n")
        return dest / "variance.md"
    fmt = df.copy()
    fmt["n_steps"] = fmt["n_steps"].map(lambda v: "∞" if v == math.inf else str(int(v)))
    for est in ("plain", "systematic"):
        fmt[est] = [f"{v:.4g} ± {s:.2g}" for v, s in zip(df[est], df[f"{est}_se"], strict=True)]
    fmt["se_ratio"] = fmt["se_ratio"].map(lambda v: f"{v:.2f}")
    (dest / "variance.md").write_text(
        f"# Plain against systematic t, {passes} passes over {examples} test examples each\n\n"
        f"plain: s.e. over {passes} i.i.d. passes; systematic: {groups} independent groups of {passes // groups} "
        "evenly spaced passes, s.e. over group means (suite/timesteps.py). se_ratio = plain s.e. / systematic s.e.: "
        "the factor by which the systematic estimator cuts the standard error for the same network evaluations.\n\n"
        + markdown(fmt[VARIANCE_COLUMNS]) + "\n")
    return dest / "variance.md"
