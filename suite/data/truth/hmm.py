"""A discrete hidden Markov model: exact ln p(x) by the forward algorithm, ancestral sampling, Baum-Welch EM.

Parameters (float64): `start` pi_i = p(z_1 = i), `trans` A_ij = p(z_{t+1} = j | z_t = i), `emit` E_ik = p(x_t = k |
z_t = i). The likelihood of a sequence sums over every state path,

    p(x_1..L) = sum_{z_1..L} pi_{z_1} E_{z_1 x_1} prod_{t>1} A_{z_{t-1} z_t} E_{z_t x_t},

computed by the forward recursion alpha_1 = pi * E[:, x_1], alpha_t = (alpha_{t-1} A) * E[:, x_t], normalised at
every step (c_t = sum alpha_t), so ln p(x) = sum_t ln c_t without underflow (Rabiner 1989, eq. 91-92).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _normalise_rows(p: torch.Tensor, what: str) -> torch.Tensor:
    p = torch.as_tensor(p, dtype=torch.float64)
    if not torch.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"HMM {what}: probabilities must be finite and >= 0")
    s = p.sum(-1, keepdim=True)
    if (s <= 0).any():
        raise ValueError(f"HMM {what}: every row needs positive mass")
    return p / s


@dataclass
class HMM:
    start: torch.Tensor  # (S,)
    trans: torch.Tensor  # (S, S)
    emit: torch.Tensor  # (S, K)

    def __post_init__(self):
        # rows renormalised in float64: the model is exactly the stored numbers, rescaled to sum to 1
        self.start = _normalise_rows(self.start, "start")
        self.trans = _normalise_rows(self.trans, "trans")
        self.emit = _normalise_rows(self.emit, "emit")
        S = self.start.shape[0]
        if self.start.shape != (S,) or self.trans.shape != (S, S) or self.emit.shape[0] != S or self.emit.ndim != 2:
            raise ValueError(f"HMM shapes: start (S,), trans (S, S), emit (S, K); got {tuple(self.start.shape)}, "
                             f"{tuple(self.trans.shape)}, {tuple(self.emit.shape)}")

    @property
    def num_states(self) -> int:
        return self.start.shape[0]

    @property
    def num_symbols(self) -> int:
        return self.emit.shape[1]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ln p(x) of each sequence (float64, shape x.shape[:-1]) by the scaled forward algorithm."""
        x = torch.as_tensor(x).long()
        if x.ndim < 1 or x.shape[-1] < 1:
            raise ValueError(f"HMM.log_prob needs sequences (..., L) with L >= 1, got shape {tuple(x.shape)}")
        if x.numel() and (x.min() < 0 or x.max() >= self.num_symbols):
            raise ValueError(f"HMM.log_prob: symbols must lie in 0..{self.num_symbols - 1}")
        lead, L = x.shape[:-1], x.shape[-1]
        x = x.reshape(-1, L)
        eT = self.emit.T  # (K, S): eT[x] gathers E[:, x_t] per sequence
        a = self.start * eT[x[:, 0]]
        c = a.sum(1)
        ll = c.log()
        a = a / c[:, None]
        for t in range(1, L):
            a = (a @ self.trans) * eT[x[:, t]]
            c = a.sum(1)
            ll = ll + c.log()
            a = a / c[:, None]
        return ll.reshape(lead)

    def sample(self, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """n sequences, int64 (n, length), by ancestral sampling (inverse CDF of float64 uniforms)."""
        u = torch.rand(length, 2, n, 1, generator=generator, dtype=torch.float64)  # u[t, 0]: state, u[t, 1]: symbol
        cs, ct, ce = self.start.cumsum(0), self.trans.cumsum(1), self.emit.cumsum(1)
        S, K = self.num_states, self.num_symbols
        x = torch.empty(n, length, dtype=torch.int64)
        z = torch.searchsorted(cs, u[0, 0, :, 0]).clamp_(max=S - 1)
        for t in range(length):
            if t:
                z = torch.searchsorted(ct[z], u[t, 0]).squeeze(1).clamp_(max=S - 1)
            x[:, t] = torch.searchsorted(ce[z], u[t, 1]).squeeze(1).clamp_(max=K - 1)
        return x

    def stationary(self) -> torch.Tensor:
        """The stationary distribution pi A = pi of the state chain (float64), by a least-squares solve."""
        S = self.num_states
        M = torch.cat([self.trans.T - torch.eye(S, dtype=torch.float64), torch.ones(1, S, dtype=torch.float64)])
        rhs = torch.zeros(S + 1, dtype=torch.float64)
        rhs[-1] = 1
        pi = torch.linalg.lstsq(M, rhs[:, None]).solution.squeeze(1)
        if (pi < -1e-12).any():
            raise ValueError("HMM.stationary: the state chain has no unique stationary distribution")
        return pi.clamp(min=0) / pi.clamp(min=0).sum()


def baum_welch_step(model: HMM, x: torch.Tensor, pseudo: float) -> tuple[HMM, float]:
    """One EM step on chunks x (B, T): the expected counts of starts, transitions and emissions (Rabiner 1989,
    eq. 37-40 with scaled alpha, beta), plus `pseudo` to every count. Returns the new model and the mean
    ln p(chunk) under the old one (EM never lowers it, up to the pseudo-counts' prior)."""
    B, T = x.shape
    S, K = model.num_states, model.num_symbols
    eo = model.emit.T[x]  # (B, T, S)
    alpha = torch.empty(B, T, S, dtype=torch.float64)
    c = torch.empty(B, T, dtype=torch.float64)
    a = model.start * eo[:, 0]
    for t in range(T):
        if t:
            a = (a @ model.trans) * eo[:, t]
        c[:, t] = a.sum(1)
        a = a / c[:, t, None]
        alpha[:, t] = a
    beta = torch.ones(B, S, dtype=torch.float64)
    xi = torch.zeros(S, S, dtype=torch.float64)
    em = torch.zeros(K, S, dtype=torch.float64)
    for t in range(T - 1, -1, -1):
        gamma = alpha[:, t] * beta  # p(z_t | x), rows sum to 1
        em.index_add_(0, x[:, t], gamma)
        if t == 0:
            st = gamma.sum(0)
        else:
            w = eo[:, t] * beta / c[:, t, None]
            xi += alpha[:, t - 1].T @ w
            beta = w @ model.trans.T
    new = HMM(st + pseudo, xi * model.trans + pseudo, em.T + pseudo)
    return new, float(c.log().sum(1).mean())


def random_hmm(num_states: int, num_symbols: int, generator: torch.Generator) -> HMM:
    """Flat-Dirichlet random rows (-ln U normalised), uniform start: EM's seeded initialisation."""
    S, K = num_states, num_symbols
    g = lambda *shape: -torch.log(torch.rand(*shape, generator=generator, dtype=torch.float64))  # noqa: E731
    return HMM(torch.ones(S, dtype=torch.float64), g(S, S), g(S, K))


def fit_hmm(chunks: torch.Tensor, num_states: int, num_symbols: int, iters: int, seed: int,
            pseudo: float = 1e-2, log=None) -> tuple[HMM, list[float]]:
    """Baum-Welch from a seeded random start on chunks (B, T), `iters` steps; then the start distribution is
    replaced by the stationary one, so a sampled sequence is a window of one long stationary stream."""
    model = random_hmm(num_states, num_symbols, torch.Generator().manual_seed(seed))
    history = []
    for it in range(iters):
        model, ll = baum_welch_step(model, chunks.long(), pseudo)
        history.append(ll)
        if log is not None:
            log(f"HMM EM {it + 1}/{iters}: mean ln p(chunk) {ll:.3f} nats ({-ll / chunks.shape[1] / np.log(2):.4f} BPC)")
    return HMM(model.stationary(), model.trans, model.emit), history
