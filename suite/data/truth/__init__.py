"""Ground-truth data sets: every split is sampled from a known model, so the exact -ln p(x) of every example is
known and a method's bound gap to the truth is measured, not guessed (docs/truth.md).

  text_hmm                 discrete K = 27, (seq_len,): a 64-state HMM fitted to the embedded Shakespeare (train)
  mnist_mixture_binarized  discrete K = 2, (1, 28, 28): a mixture of 100 Bernoulli products fitted to the embedded
                           digits (train), binarised
  mnist_mixture_256 / _16  discretised, (1, 28, 28): a mixture of 100 products of per-pixel bin distributions
                           fitted to the embedded digits (train) at 256 / 16 bins
  gmm_2d                   continuous, (2,): a 32-component Gaussian mixture along the swiss roll, standardised

The fitted parameters ship in suite/data/assets/truth_*.npz (rebuilt by scripts/build_truth_assets.py; provenance
in PROVENANCE.md there); gmm_2d is closed form. Each split is drawn once from (data_seed, split) and cached, like
the toys. `exact_nll(split)` returns -ln p(x) per example in nats (float64), in the value space the models see:
the probability mass of the sequence / image for discrete and discretised data (a discretised image's mass is the
product of its bins' masses, so it needs no bin width), the density of the standardised float32 point for gmm_2d.
`spec.protocol["exact_nll"]` says how it is computed; `has_exact_nll(data)` tells a data set with a truth apart.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import torch

from suite.data import register
from suite.data.base import SPLITS, Dataset, DataSpec, bin_centres_from_index, derive_seed, index_from_bin_centres
from suite.data.truth.gmm import GaussianMixture, swiss_roll_gmm
from suite.data.truth.hmm import HMM
from suite.data.truth.mixture import PixelMixture

ASSETS = Path(__file__).resolve().parents[1] / "assets"
HMM_ASSET = ASSETS / "truth_text_hmm.npz"
MIXTURE_ASSETS = {K: ASSETS / f"truth_mnist_mixture_{K}.npz" for K in (2, 16, 256)}
REBUILD = "reinstall bfnbench, or rebuild with `python scripts/build_truth_assets.py`"
_SPLIT_STREAM = 31  # derive_seed tag of the per-split sampling streams
TEXT_SIZES = {"train": 20000, "val": 1000, "test": 1000}
MNIST_SIZES = {"train": 8000, "val": 1000, "test": 1000}
GMM_SIZES = {"train": 10000, "val": 1000, "test": 1000}
HMM_STATES, MIXTURE_COMPONENTS = 64, 100  # the shipped models' sizes (checked on load): specs need no file read


def has_exact_nll(data: Dataset) -> bool:
    """Whether a data set knows the exact -ln p(x) of its examples (`exact_nll(split)`)."""
    return "exact_nll" in data.spec.protocol and callable(getattr(data, "exact_nll", None))


def _read(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"ground-truth model {path} is missing (it ships with the package); {REBUILD}")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@cache
def load_hmm() -> HMM:
    a = _read(HMM_ASSET)
    hmm = HMM(torch.from_numpy(a["start"]), torch.from_numpy(a["trans"]), torch.from_numpy(a["emit"]))
    if (hmm.num_states, hmm.num_symbols) != (HMM_STATES, 27):
        raise ValueError(f"{HMM_ASSET}: {hmm.num_states} states x {hmm.num_symbols} symbols, expected "
                         f"{HMM_STATES} x 27; {REBUILD}")
    return hmm


@cache
def load_mixture(K: int) -> PixelMixture:
    if K not in MIXTURE_ASSETS:
        raise ValueError(f"no fitted pixel mixture for K={K}; have {sorted(MIXTURE_ASSETS)}")
    a = _read(MIXTURE_ASSETS[K])
    interior = torch.from_numpy(a["interior"]) if K > 2 else None
    mix = PixelMixture(torch.from_numpy(a["weights"]), torch.from_numpy(a["types"]), interior, K)
    if (mix.num_components, mix.ndim) != (MIXTURE_COMPONENTS, 784):
        raise ValueError(f"{MIXTURE_ASSETS[K]}: {mix.num_components} components x {mix.ndim} pixels, expected "
                         f"{MIXTURE_COMPONENTS} x 784; {REBUILD}")
    return mix


class TruthDataset(Dataset):
    """Examples sampled from a model (each split once, from (data_seed, split)); `exact_nll` is their -ln p.

    The model loads on first use (constructing reads no file). `sample(n, generator)` gives raw draws (class /
    bin indices, or float64 points), `log_prob(raw)` their exact ln p; `to_model` / `from_model` convert between
    raw draws and the spec's value space.
    """

    def __init__(self, spec: DataSpec, sample, log_prob, data_seed: int = 0):
        self.spec, self._sample, self._log_prob, self.data_seed = spec, sample, log_prob, int(data_seed)
        self._cache: dict[str, torch.Tensor] = {}
        self._nll: dict[str, torch.Tensor] = {}

    def to_model(self, raw: torch.Tensor) -> torch.Tensor:
        s = self.spec
        if s.kind == "continuous":
            return raw.to(torch.float32).reshape(len(raw), *s.shape)
        if s.kind == "discretised":
            return bin_centres_from_index(raw, s.num_classes).reshape(len(raw), *s.shape)
        return raw.long().reshape(len(raw), *s.shape)

    def from_model(self, x: torch.Tensor) -> torch.Tensor:
        """Model values -> what the model's log_prob takes; values off the spec's grid are an error."""
        s = self.spec
        if tuple(x.shape[1:]) != s.shape:
            raise ValueError(f"{s.name}: examples have shape {tuple(x.shape[1:])}, the spec says {s.shape}")
        if s.kind == "continuous":
            return x.to(torch.float64).reshape(len(x), -1)
        if s.kind == "discretised":
            idx = index_from_bin_centres(x, s.num_classes)
            if not torch.allclose(bin_centres_from_index(idx, s.num_classes), x.float(), rtol=0, atol=1e-6):
                raise ValueError(f"{s.name}: values must be the bin centres (2k + 1)/{s.num_classes} - 1")
            return idx.reshape(len(x), -1)
        if x.is_floating_point() and not torch.equal(x, x.round()):
            raise ValueError(f"{s.name}: discrete values must be class indices 0..{s.num_classes - 1}")
        return x.long().reshape(len(x), -1)

    def examples(self, split: str) -> torch.Tensor:
        self.check_split(split)
        if split not in self._cache:
            g = torch.Generator().manual_seed(derive_seed(self.data_seed, SPLITS.index(split), _SPLIT_STREAM))
            self._cache[split] = self.to_model(self._sample(self.spec.split_sizes[split], g))
        return self._cache[split]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ln p(x) per example (float64) of a batch in the model's value space."""
        return self._log_prob(self.from_model(x))

    def exact_nll(self, split: str) -> torch.Tensor:
        """-ln p(x) in nats (float64, (N,)) of every example of `split`, in `examples(split)`'s order."""
        self.check_split(split)
        if split not in self._nll:
            self._nll[split] = -self.log_prob(self.examples(split))
        return self._nll[split]


def _sizes(name: str, defaults: dict[str, int], n_train, n_val, n_test) -> dict[str, int]:
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    sizes = {k: int(defaults[k] if v is None else v) for k, v in sizes.items()}
    bad = {f"n_{k}": v for k, v in sizes.items() if v < 1}
    if bad:
        raise ValueError(f"{name}: split sizes must be >= 1, got {bad}")
    return sizes


def _generation(data_seed: int) -> str:
    return f"each split sampled once from the model, seed derive_seed(data_seed={data_seed}, split index, 31)"


@register("text_hmm")
def make_text_hmm(data_dir: Path | None = None, *, seq_len: int = 128, data_seed: int = 0, n_train: int | None = None,
                  n_val: int | None = None, n_test: int | None = None) -> TruthDataset:
    if int(seq_len) < 1:
        raise ValueError(f"text_hmm seq_len must be >= 1, got {seq_len}")
    L = int(seq_len)
    spec = DataSpec(
        "text_hmm", "discrete", (L,), num_classes=27,
        value_map="class 0 = space, 1..26 = a..z (alphabet ' abcdefghijklmnopqrstuvwxyz')",
        split_sizes=_sizes("text_hmm", TEXT_SIZES, n_train, n_val, n_test),
        protocol={"seq_len": str(L), "generation": _generation(data_seed),
                  "exact_nll": f"forward algorithm of the {HMM_STATES}-state HMM (float64), started in its "
                               f"stationary distribution: each sequence is a window of one stationary stream"},
        source=f"generated: {HMM_STATES}-state HMM fitted by Baum-Welch to the embedded Shakespeare's train "
               f"split ({HMM_ASSET.name})")
    return TruthDataset(spec, lambda n, g: load_hmm().sample(n, L, g), lambda x: load_hmm().log_prob(x), data_seed)


def _mnist_mixture(name: str, K: int):
    def make(data_dir: Path | None = None, *, data_seed: int = 0, n_train: int | None = None, n_val: int | None = None,
             n_test: int | None = None) -> TruthDataset:
        if K == 2:
            kind, vmap, what = "discrete", "int64 class 0/1 (a fixed binary image per example)", "Bernoulli products"
        else:
            shift = f" (= pixel >> {int(np.log2(256 // K))})" if K < 256 else ""
            kind, what = "discretised", "products of per-pixel bin distributions"
            vmap = (f"bin k (as pixel*{K}//256{shift} of the digits it was fitted to); value = bin centre "
                    f"(2k+1)/{K} - 1 in [-1, 1]")
        spec = DataSpec(
            name, kind, (1, 28, 28), num_classes=K, value_map=vmap,
            split_sizes=_sizes(name, MNIST_SIZES, n_train, n_val, n_test),
            protocol={"generation": _generation(data_seed),
                      "exact_nll": f"logsumexp over the {MIXTURE_COMPONENTS} components of ln w_c + sum of ln "
                                   f"p(bin) over the 784 pixels (float64): the image's probability mass"},
            source=f"generated: mixture of {MIXTURE_COMPONENTS} {what} fitted by EM to the embedded MNIST digits' "
                   f"train split ({MIXTURE_ASSETS[K].name})")
        return TruthDataset(spec, lambda n, g: load_mixture(K).sample(n, g), lambda x: load_mixture(K).log_prob(x),
                            data_seed)

    register(name)(make)


_mnist_mixture("mnist_mixture_binarized", 2)
_mnist_mixture("mnist_mixture_256", 256)
_mnist_mixture("mnist_mixture_16", 16)


@register("gmm_2d")
def make_gmm_2d(data_dir: Path | None = None, *, num_components: int = 32, noise: float = 0.5, data_seed: int = 0,
                n_train: int | None = None, n_val: int | None = None, n_test: int | None = None) -> TruthDataset:
    gmm, _, _ = swiss_roll_gmm(int(num_components), float(noise))
    spec = DataSpec(
        "gmm_2d", "continuous", (2,),
        value_map=f"{num_components} Gaussians along the swiss roll (noise {noise}), standardised to mean 0, var 1 "
                  f"per coordinate by the mixture's exact moments; float32",
        split_sizes=_sizes("gmm_2d", GMM_SIZES, n_train, n_val, n_test),
        protocol={"generation": _generation(data_seed),
                  "exact_nll": "density of the standardised float32 point under the standardised mixture (float64; "
                               "the standardisation's Jacobian ln s_1 + ln s_2 is inside it)"},
        source="generated: closed-form Gaussian mixture along the swiss roll (suite/data/truth/gmm.py)")
    return TruthDataset(spec, gmm.sample, gmm.log_prob, data_seed)


__all__ = ["TruthDataset", "has_exact_nll", "load_hmm", "load_mixture", "GaussianMixture", "HMM", "PixelMixture",
           "swiss_roll_gmm"]
