"""A mixture of products of per-pixel bin distributions: exact ln p(x) of a K-bin image, sampling, EM.

Component c (weight w_c) draws every pixel d independently. A pixel's bin is one of three types, with
probabilities r[c, d, type]: the lowest bin 0, the highest bin K-1, or an interior bin 1..K-2 (K > 2 only), and
an interior bin k has probability r[c, d, interior] * h[c, k-1] with h_c a per-component histogram over the K-2
interior bins. MNIST's pixels are mostly exactly 0 or 255 with a thin band of grey at the stroke edges, which
this shape captures with 2-3 numbers per pixel instead of K. For K = 2 it is a mixture of Bernoulli products.

    p(x) = sum_c w_c prod_d q[c, d, x_d],  q[c, d, 0] = r[c,d,0], q[c, d, K-1] = r[c,d,1], q[c, d, k] = r[c,d,2] h[c,k-1]

ln p(x) = logsumexp_c (ln w_c + sum_d ln q[c, d, x_d]), in float64; the sum over pixels is a matrix product of
the one-hot pixel types with ln r plus the interior-bin histogram of the image with ln h.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

CHUNK = 1000  # images per block in log_prob / EM: bounds the (N, D * types) one-hot at ~20 MB


def _norm(p, what: str) -> torch.Tensor:
    p = torch.as_tensor(p, dtype=torch.float64)
    if not torch.isfinite(p).all() or (p <= 0).any():
        raise ValueError(f"PixelMixture {what}: probabilities must be finite and > 0 (every image keeps p(x) > 0)")
    return p / p.sum(-1, keepdim=True)


def features(x: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One-hot pixel types (N, D * types) and each image's interior-bin counts (N, K-2; None for K = 2), float64."""
    types = x if K == 2 else torch.where(x == 0, 0, torch.where(x == K - 1, 1, 2))
    onehot = torch.nn.functional.one_hot(types, 2 if K == 2 else 3).to(torch.float64).reshape(len(x), -1)
    if K == 2:
        return onehot, None
    hist = torch.zeros(len(x), K, dtype=torch.float64)
    hist.scatter_add_(1, x, torch.ones(x.shape, dtype=torch.float64))
    return onehot, hist[:, 1 : K - 1]


@dataclass
class PixelMixture:
    weights: torch.Tensor  # (C,)
    types: torch.Tensor  # (C, D, 2) for K = 2, (C, D, 3) for K > 2: bin 0 / bin K-1 / interior
    interior: torch.Tensor | None  # (C, K-2) for K > 2, else None
    K: int

    def __post_init__(self):
        if self.K < 2:
            raise ValueError(f"PixelMixture K must be >= 2, got {self.K}")
        nt = 2 if self.K == 2 else 3
        self.weights = _norm(self.weights, "weights")
        self.types = _norm(self.types, "types")
        C = self.weights.shape[0]
        if self.types.ndim != 3 or self.types.shape[0] != C or self.types.shape[2] != nt:
            raise ValueError(f"PixelMixture types must be (C={C}, D, {nt}) for K={self.K}, got {tuple(self.types.shape)}")
        if self.K > 2:
            if self.interior is None or tuple(self.interior.shape) != (C, self.K - 2):
                raise ValueError(f"PixelMixture interior must be (C={C}, K-2={self.K - 2}) for K={self.K}")
            self.interior = _norm(self.interior, "interior")
        elif self.interior is not None:
            raise ValueError("PixelMixture with K = 2 has no interior bins: pass interior=None")

    @property
    def num_components(self) -> int:
        return self.weights.shape[0]

    @property
    def ndim(self) -> int:
        return self.types.shape[1]

    def bin_probs(self) -> torch.Tensor:
        """q[c, d, k] for every bin (C, D, K): the product form's per-pixel distributions, written out."""
        r = self.types
        if self.K == 2:
            return r.clone()
        inner = r[:, :, 2:3] * self.interior[:, None, :]
        return torch.cat([r[:, :, :1], inner, r[:, :, 1:2]], dim=2)

    def _joint(self, x: torch.Tensor, log_w, log_r, log_h) -> torch.Tensor:
        """ln w_c + ln p(x | c), (N, C)."""
        onehot, hist = features(x, self.K)
        out = onehot @ log_r.T + log_w
        if hist is not None:
            out = out + hist @ log_h.T
        return out

    def _logs(self):
        log_h = self.interior.log() if self.K > 2 else None
        return self.weights.log(), self.types.log().reshape(self.num_components, -1), log_h

    def check_bins(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x).long().reshape(len(x), -1)
        if x.shape[1] != self.ndim:
            raise ValueError(f"PixelMixture: images have {x.shape[1]} pixels, the model {self.ndim}")
        if x.numel() and (x.min() < 0 or x.max() >= self.K):
            raise ValueError(f"PixelMixture: bin indices must lie in 0..{self.K - 1}")
        return x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ln p(x) per image (float64, (N,)) from bin indices (N, ...) with prod(...) = D."""
        x = self.check_bins(x)
        logs = self._logs()
        return torch.cat([torch.logsumexp(self._joint(x[i : i + CHUNK], *logs), 1) for i in range(0, len(x), CHUNK)]
                         ) if len(x) else torch.zeros(0, dtype=torch.float64)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n images of bin indices, int64 (n, D): component, then each pixel's type, then an interior bin."""
        C, D = self.num_components, self.ndim
        u_c, u_t, u_k = (torch.rand(n, m, generator=generator, dtype=torch.float64) for m in (1, D, D))
        c = torch.searchsorted(self.weights.cumsum(0), u_c.squeeze(1)).clamp_(max=C - 1)
        cum_r = self.types.cumsum(2)[c]  # (n, D, types)
        t = torch.searchsorted(cum_r, u_t[:, :, None]).squeeze(2).clamp_(max=self.types.shape[2] - 1)
        if self.K == 2:
            return t
        cum_h = self.interior.cumsum(1)[c]  # (n, K-2)
        k = 1 + torch.searchsorted(cum_h, u_k).clamp_(max=self.K - 3)
        return torch.where(t == 0, 0, torch.where(t == 1, self.K - 1, k))


def fit_mixture(x: torch.Tensor, K: int, num_components: int, iters: int, seed: int, pseudo: float = 1.0,
                log=None) -> tuple[PixelMixture, list[float]]:
    """EM on bin-index images x (N, D). Initialised by C distinct images picked with the seed (each the sole
    member of its component); every M-step adds `pseudo` to each count (a Dirichlet prior: no zero probability).
    Returns the model and the mean ln p(x) of the training images after each E-step."""
    x = torch.as_tensor(x).long()
    N, D = x.shape
    C = num_components
    if not 1 <= C <= N:
        raise ValueError(f"num_components must be in 1..{N} (the number of images), got {C}")
    nt = 2 if K == 2 else 3
    resp = torch.zeros(N, C, dtype=torch.float64)
    resp[torch.randperm(N, generator=torch.Generator().manual_seed(seed))[:C], torch.arange(C)] = 1
    history = []
    for it in range(iters + 1):
        # M-step: expected counts of components, pixel types and interior bins
        cw = torch.zeros(C, dtype=torch.float64)
        cr = torch.zeros(C, D * nt, dtype=torch.float64)
        ch = torch.zeros(C, max(K - 2, 0), dtype=torch.float64)
        for i in range(0, N, CHUNK):
            onehot, hist = features(x[i : i + CHUNK], K)
            r = resp[i : i + CHUNK]
            cw += r.sum(0)
            cr += r.T @ onehot
            if hist is not None:
                ch += r.T @ hist
        model = PixelMixture(cw + pseudo, cr.reshape(C, D, nt) + pseudo, ch + pseudo if K > 2 else None, K)
        if it == iters:
            return model, history
        # E-step: responsibilities p(c | x)
        logs = model._logs()
        total = 0.0
        for i in range(0, N, CHUNK):
            j = model._joint(x[i : i + CHUNK], *logs)
            lse = torch.logsumexp(j, 1)
            resp[i : i + CHUNK] = (j - lse[:, None]).exp()
            total += float(lse.sum())
        history.append(total / N)
        if log is not None:
            log(f"mixture K={K} EM {it + 1}/{iters}: mean -ln p(x) {-total / N:.2f} nats "
                f"({-total / N / D / np.log(2):.4f} bits/dim)")
    raise AssertionError("unreachable")
