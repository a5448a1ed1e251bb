"""Look at the data: `describe()` lists every data set, `show()` draws examples, `render()` draws any batch.

Used by `bfnbench data list`, `bfnbench data show NAME` and the sample grids of `bfnbench sample` / plots.
Drawing uses matplotlib's Agg canvas directly (no pyplot), so it never touches a global backend or a screen.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from suite.data import dataset_names, get_dataset
from suite.data.base import SPLITS, DataError, DataSpec

MIN_POINTS = 1000  # a 2-D point cloud needs this many points before its shape shows


def describe(data_dir: str | Path | None = None) -> pd.DataFrame:
    """One row per registered data set (names starting with '_' are test fixtures and left out).

    Cheap: constructing a data set reads no files, and `present` only checks that they exist.
    """
    rows = []
    for name in dataset_names():
        if name.startswith("_"):
            continue
        ds = get_dataset(name, data_dir)
        try:
            spec = ds.spec
        except DataError as e:  # e.g. a shipped asset's metadata is missing: list it, say why, keep going
            rows.append(dict(name=name, present=False, source=f"unavailable: {e}"))
            continue
        rows.append(dict(name=name, kind=spec.kind, K=spec.num_classes, shape="x".join(map(str, spec.shape)),
                         D=spec.ndim, **{s: spec.split_sizes.get(s) for s in SPLITS}, present=bool(ds.present()),
                         stand_in_for=spec.stand_in_for or "", source=spec.source))
    cols = ["name", "kind", "K", "shape", "D", *SPLITS, "present", "stand_in_for", "source"]
    return pd.DataFrame(rows, columns=cols).astype({"K": "Int64", "D": "Int64", **{s: "Int64" for s in SPLITS}})


def show(name: str, out: str | Path | None, n: int = 64, seed: int = 0, data_dir: str | Path | None = None,
         split: str = "train", **options) -> Path | list[str]:
    """Draw `n` examples of a data set (one shuffled batch of `split`, as a training pass at `seed` sees it).

    Images -> a PNG grid at `out`; 2-D toys -> a scatter PNG (at least MIN_POINTS points); other sequences ->
    a line plot PNG; text -> the decoded samples, returned as a list (`out` unused).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ds = get_dataset(name, data_dir, **options)
    spec = ds.spec
    if spec.kind == "continuous" and spec.shape == (2,):
        n = max(n, MIN_POINTS)
    n = min(n, ds.num_examples(split))
    x = next(iter(ds.batches(split, n, seed=seed, shuffle=True, drop_last=False)))
    return render(spec, x, out, title=f"{name} ({split}, {len(x)} examples)")


def _is_text(spec: DataSpec) -> bool:
    return spec.kind == "discrete" and len(spec.shape) == 1 and spec.num_classes == 27


def render(spec: DataSpec, x: torch.Tensor, out: str | Path | None, title: str | None = None) -> Path | list[str]:
    """A batch in the data set's value space -> PNG at `out` (images, toys) or a list of strings (text)."""
    x = x.detach().cpu()
    if _is_text(spec):
        from suite.data.text8 import decode

        return [decode(row) for row in x]
    if out is None:
        raise ValueError(f"render: {spec.name} draws a PNG; give an output path")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if len(spec.shape) == 3:
        grid = image_grid(spec, x)
        w = 6.0
        fig = Figure(figsize=(w, w * grid.shape[0] / grid.shape[1] + (0.4 if title else 0)))
        ax = fig.add_subplot()
        ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_axis_off()
    elif spec.kind == "continuous" and spec.shape == (2,):
        fig = Figure(figsize=(5, 5))
        ax = fig.add_subplot()
        ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=3, alpha=0.5)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
    else:  # sequences (the heartbeat): one stepped line per example, stacked
        rows = x.reshape(len(x), -1).float().numpy()[:16]  # more lines than this are unreadable
        title = f"{title}, first {len(rows)} shown" if title and len(x) > len(rows) else title
        fig = Figure(figsize=(7, 0.35 * len(rows) + 1))
        ax = fig.add_subplot()
        span = max(float(np.ptp(rows)), 1.0)
        for i, r in enumerate(rows):
            ax.step(np.arange(len(r)), r / span * 0.8 - 1.1 * i, where="mid", lw=1)
        ax.set_yticks([])
        ax.set_xlabel("position")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_png(str(out))
    return out


def image_grid(spec: DataSpec, x: torch.Tensor, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) model values -> one [0, 1] array (rows, cols[, 3]) with a `pad`-pixel gap between images."""
    x = x.to(torch.float64)
    if spec.kind == "discretised" or spec.kind == "continuous":
        x = (x + 1) / 2  # [-1, 1] -> [0, 1]
    else:
        x = x / (spec.num_classes - 1)  # class index -> grey level
    x = x.clamp(0, 1).numpy()
    n, c, h, w = x.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.ones((c, rows * (h + pad) + pad, cols * (w + pad) + pad))
    for i in range(n):
        r, q = divmod(i, cols)
        grid[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = x[i]
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)
