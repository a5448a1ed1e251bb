"""`bfnbench plots`: NLL against step count, training curves, sample grids (PNG and PDF).

Every method keeps one colour across all figures; BFN variants are blues, diffusion baselines warm.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

COLOURS = {
    "bfn_continuous": "#1f4e9c",
    "bfn_discretised": "#3b8bd9",
    "bfn_discrete": "#0b2f6b",
    "sohl_gaussian": "#d9822b",
    "sohl_binomial": "#b5541c",
    "ddpm": "#c23b22",
    "vdm": "#8c1c13",
    "multinomial_diffusion": "#e0a030",
    "masked_diffusion": "#7a4f9c",
}
_FALLBACK = plt.get_cmap("tab10")


def colour(method: str) -> str:
    return COLOURS.get(method, matplotlib.colors.to_hex(_FALLBACK(hash(method) % 10)))


def _save(fig, path: Path) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in (".png", ".pdf"):
        p = path.with_suffix(ext)
        fig.savefig(p, dpi=130, bbox_inches="tight", metadata={"CreationDate": None} if ext == ".pdf" else None)
        out.append(p)
    plt.close(fig)
    return out


def _grid(n: int, height: float, cols: int = 3):
    """A figure with n panels, at most `cols` per row; unused panels hidden."""
    cols = min(cols, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, height * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _falling(train_info) -> bool:
    try:
        info = json.loads(train_info) if isinstance(train_info, str) and train_info else {}
    except ValueError:
        return False
    return bool(info.get("still_falling") or (info.get("convergence") or {}).get("still_falling"))


def _label(m: str, g: pd.DataFrame) -> str:
    """The method's legend entry, marked ‡ when its validation bound was still falling (suite/compare.py)."""
    return f"{m} ‡ still falling" if "train_info" in g and g["train_info"].map(_falling).any() else m


def nll_vs_steps(df: pd.DataFrame, path: Path) -> list[Path]:
    """One panel per data set: NLL bound against n steps (log x, error bars), continuous time dashed; the null
    model (grey) and, where the data were sampled from a known model, the exact NLL (black) dotted."""
    refs = df[(df["metric"] == "nll") & df["method"].isin(["null", "truth"])]
    d = df[(df["metric"] == "nll") & df["n_steps"].notna()]
    if d.empty:
        return []
    sets = sorted(d["dataset"].unique())
    fig, axes = _grid(len(sets), 3.4)
    for ax, name in zip(axes, sets, strict=False):
        s = d[d["dataset"] == name]
        for m, g in s.groupby("method", sort=True):
            c = colour(m)
            fin = g[g["n_steps"] < math.inf].sort_values("n_steps")
            if len(fin):
                ax.errorbar(fin["n_steps"], fin["value"], yerr=fin["stderr"].fillna(0), color=c, marker="o", ms=3,
                            capsize=2, lw=1.4, label=_label(m, g))
            inf = g[g["n_steps"] == math.inf]
            if len(inf):
                v = float(inf["value"].iloc[0])
                ax.axhline(v, color=c, ls="--", lw=1.1, label=None if len(fin) else f"{_label(m, g)} (continuous)")
        for who, colr in (("null", "0.6"), ("truth", "k")):
            r = refs[(refs["dataset"] == name) & (refs["method"] == who)]
            if len(r):
                ax.axhline(float(r["value"].iloc[-1]), color=colr, ls=":", lw=1.2,
                           label="null model" if who == "null" else "truth (exact NLL)")
        ax.set_xscale("log")
        ax.set_xlabel("steps n (dashed: continuous time)")
        ax.set_ylabel(f"NLL bound ({s['unit'].iloc[0]})")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def training_curves(df: pd.DataFrame, path: Path) -> list[Path]:
    """EMA validation bound against updates (the training loss where no bound was recorded: older runs), one panel
    per comparison; a run still falling at the end (suite/compare.py convergence) is marked ‡."""
    key = "val_bound_ema" if (df["metric"] == "val_bound_ema").any() else "val_loss_ema"
    d = df[df["metric"] == key].copy()
    if d.empty:
        return []
    d["step"] = d["train_info"].map(lambda s: json.loads(s)["step"])
    d["comparison"] = d["train_info"].map(lambda s: json.loads(s)["comparison"])
    comps = sorted(d["comparison"].unique())
    fig, axes = _grid(len(comps), 3.2)
    for ax, comp in zip(axes, comps, strict=False):
        for m, g in d[d["comparison"] == comp].groupby("method", sort=True):
            g = g.sort_values("step")
            ax.plot(g["step"], g["value"] / g["n_dims"], color=colour(m), label=_label(m, g), lw=1.4)
        ax.set_xlabel("update")
        ax.set_ylabel("EMA validation bound (nats/dim)" if key == "val_bound_ema" else "EMA validation loss (nats/dim)")
        ax.set_title(comp, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


@torch.no_grad()
def sample_grid(method, spec, path: Path, n_steps_list=(10, 100), num: int = 36, seed: int = 0) -> list:
    """Samples for each step count: a PNG per step count (images, toys) or a text file (text)."""
    from suite.data import show

    was = method.training
    method.eval()
    out = []
    T = method.num_steps
    if T is not None:  # a discrete-time model samples on (a sub-sequence of) its trained grid
        n_steps_list = sorted({min(n, T) for n in n_steps_list})
    for n in n_steps_list:
        g = torch.Generator(device=method.device).manual_seed(seed)
        x = method.sample(num, n, generator=g).cpu()
        p = Path(path).with_name(f"{Path(path).stem}_n{n}.png")
        p.parent.mkdir(parents=True, exist_ok=True)
        res = show.render(spec, x, p, title=f"{method.label}, {n} steps")
        if isinstance(res, list):
            p = p.with_suffix(".txt")
            p.write_text("\n".join(res) + "\n")
        out.append(p)
    method.train(was)
    return out


def write_all(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    return nll_vs_steps(df, out_dir / "nll_vs_steps") + training_curves(df, out_dir / "training_curves")
