"""Multinomial diffusion (Hoogeboom, Nielsen, Jaini, Forré, Welling 2021, arXiv 2102.05379), MATH.md s.10.

Forward (one-hot x, alpha_t = 1 - beta_t), t = 1..T:
    q(x_t | x_{t-1}) = Cat(alpha_t x_{t-1} + beta_t / K),    q(x_t | x_0) = Cat(abar_t x_0 + (1 - abar_t) / K)
Posterior (Bayes' rule; the uniform kernel is symmetric, so q(x_t | x_{t-1}) read as a function of x_{t-1} is
alpha_t x_t + (1 - alpha_t)/K):
    theta~(x_t, x_0) ∝ [alpha_t x_t + (1 - alpha_t)/K] * [abar_{t-1} x_0 + (1 - abar_{t-1})/K]
Reverse: p(x_{t-1} | x_t) = Cat(theta~(x_t, x0_hat)), x0_hat = softmax(net(x_t, t)). Because the second factor
is linear in x_0, theta~(x_t, x0_hat) = sum_k x0_hat(k) q(x_{t-1}, x_t | x_0 = k) / norm: the D3PM
"x_0-parameterisation".
NELBO = KL(q(x_T|x_0) || Cat(1/K)) + sum_{t=2..T} E_q KL(theta~(x_t, x_0) || theta~(x_t, x0_hat)) - E_q ln p(x_0|x_1).

Decoder (derived; MATH.md marks it unverified): the t = 1 step is the same reverse kernel with abar_0 = 1,
    p(x_0 | x_1) = theta~(x_1, x0_hat) ∝ [alpha_1 x_1 + (1 - alpha_1)/K] * x0_hat,
which is what Hoogeboom's code does (it substitutes x_0 for q(x_{t-1}|x_0) at t = 0). It is the right kernel:
with the oracle x0_hat = p_data (factorised data) it is Bayes' q(x_0 | x_1) and every reverse step is the exact
time reversal q(x_{t-1} | x_t); tests/test_multinomial.py checks the resulting NELBO against -ln p_data(x_0).

Step-count robustness: a model trained on T steps is evaluated on a sub-grid 0 = tau_0 < ... < tau_n = T,
tau_j = round(j T / n); uniform kernels compose, so q(x_{tau_j} | x_{tau_{j-1}}) has alpha = abar_{tau_j} /
abar_{tau_{j-1}} and the bound above holds with these alphas and the network called at t = tau_j / T.
Everything is O(B D K): one-hot inputs and per-class logs, never a K x K transition matrix. All schedule
quantities are float64 logs (log abar, log(1 - abar)); the per-token arithmetic is float32 in log space.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from suite.data.base import DataSpec
from suite.methods import Method, register_method

from .common import (
    build_discrete,
    call_net,
    check_spec,
    check_t_sampling,
    check_values,
    expand_to,
    gumbel_argmax,
    sample_steps,
)

SCHEDULES = ("cosine", "linear")


def multinomial_betas(T: int, schedule: str = "cosine", s: float = 0.008) -> torch.Tensor:
    """beta_1..beta_T in float64.

    cosine (Hoogeboom 2021 / Nichol & Dhariwal 2021): abar(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2),
        beta_t = min(1 - abar_t/abar_{t-1}, 0.999).
    linear: abar_t = 1 - t/T, i.e. beta_t = 1/(T - t + 1) (Sohl-Dickstein's binomial schedule; abar_T = 0 exactly).
    """
    if isinstance(T, bool) or not isinstance(T, numbers.Integral) or T < 1:
        raise ValueError(f"number of diffusion steps T must be an integer >= 1, got {T!r}")
    T = int(T)
    t = torch.arange(T + 1, dtype=torch.float64)
    if schedule == "cosine":
        f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        return torch.clamp(1 - abar[1:] / abar[:-1], max=0.999)
    if schedule == "linear":
        return 1.0 / (T - t[1:] + 1)
    raise ValueError(f"unknown multinomial schedule {schedule!r}; use one of {SCHEDULES}")


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """ln(1 - e^x) for x <= 0, accurate near 0 (gives -inf at x = 0)."""
    return torch.log(-torch.expm1(x))


@dataclass
class Grid:
    """A time grid 0 = tau_0 < ... < tau_n = T with its composed kernels (float64, index j = 0..n)."""

    tau: torch.Tensor  # (n+1,) long
    log_abar: torch.Tensor  # ln abar_{tau_j}
    log_1m_abar: torch.Tensor  # ln(1 - abar_{tau_j})
    log_a: torch.Tensor  # ln alpha of the composed step tau_{j-1} -> tau_j (j >= 1; entry 0 unused)
    log_1m_a: torch.Tensor


def _log_kernel(x: torch.Tensor, log_a: torch.Tensor, log_1m_a: torch.Tensor, K: int) -> torch.Tensor:
    """ln(a e_x + (1 - a)/K) for class indices x (B, *S) and per-example a (B,): (B, *S, K) float32."""
    miss = log_1m_a - math.log(K)
    hit = torch.logaddexp(log_a, miss)
    out = expand_to(miss.float(), x).unsqueeze(-1).expand(*x.shape, K).clone()
    return out.scatter_(-1, x.unsqueeze(-1), expand_to(hit.float(), x).unsqueeze(-1).expand(*x.shape, 1).clone())


def _log_mix(logp: torch.Tensor, log_a: torch.Tensor, log_1m_a: torch.Tensor, K: int) -> torch.Tensor:
    """ln(a p + (1 - a)/K) for log-probabilities logp (B, *S, K) and per-example a (B,)."""
    la = expand_to(log_a.float(), logp[..., 0]).unsqueeze(-1)
    lb = expand_to((log_1m_a - math.log(K)).float(), logp[..., 0]).unsqueeze(-1)
    return torch.logaddexp(logp + la, lb)


class MultinomialDiffusion(Method):
    """Hoogeboom et al. 2021 multinomial diffusion on K classes; the network predicts x_0 (K logits per dim)."""

    name = "multinomial_diffusion"
    continuous_time = False  # nll(x, None) evaluates on the full training grid of T steps
    extra_input_classes = 0  # the network reads one-hot x_t over the K classes

    def __init__(
        self,
        spec: DataSpec,
        net: nn.Module,
        *,
        T: int = 1000,
        schedule: str = "cosine",
        betas: torch.Tensor | list[float] | None = None,
        t_sampling: str = "iid",
        aux_weight: float = 0.0,
    ):
        super().__init__(spec)
        self.K = check_spec(spec, self.name)
        self.t_sampling = check_t_sampling(t_sampling, self.name)
        if not (math.isfinite(float(aux_weight)) and float(aux_weight) >= 0):
            raise ValueError(f"{self.name}: aux_weight must be a finite number >= 0, got {aux_weight!r}")
        self.aux_weight = float(aux_weight)
        if betas is None:
            if schedule not in SCHEDULES:
                raise ValueError(f"{self.name}: unknown schedule {schedule!r}; use one of {SCHEDULES} or pass betas")
            betas = multinomial_betas(T, schedule)
        else:
            betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
            if betas.numel() < 1 or not torch.isfinite(betas).all() or (betas <= 0).any() or (betas > 1).any():
                raise ValueError(f"{self.name}: betas must be a non-empty sequence with every beta_t in (0, 1]")
            schedule = "custom"
        self.T, self.schedule = int(betas.numel()), schedule
        # a plain float64 attribute, not a buffer: module.float()/.half() must not degrade the schedule, and
        # checkpoints hold only weights (the schedule is re-derived from the hyperparameters)
        self.betas = betas.cpu()
        self.net = net
        self._grids: dict[tuple[int, torch.device], Grid] = {}

    @property
    def num_steps(self) -> int:
        """The trained grid's T: n_steps=None evaluates on it, n_steps = n <= T on an n-step sub-grid of it."""
        return self.T

    # ---- schedule ---------------------------------------------------------------------------------------
    def resolve_steps(self, n_steps: int | None) -> int:
        """None -> T (this is a discrete-time model); else 1 <= n <= T, a sub-grid of the training grid."""
        if n_steps is None:
            return self.T
        if isinstance(n_steps, bool) or not isinstance(n_steps, numbers.Integral) or not 1 <= n_steps <= self.T:
            raise ValueError(
                f"{self.name}: n_steps must be an integer in 1..T = {self.T} (a sub-grid of the training grid), "
                f"got {n_steps!r}; a model trained with T steps cannot be evaluated on a finer grid"
            )
        return int(n_steps)

    def grid(self, n: int, device: torch.device | str | None = None) -> Grid:
        """The n-step sub-grid's float64 tables on `device` (cached)."""
        key = (n, torch.device(device or "cpu"))
        if key not in self._grids:
            T, betas = self.T, self.betas.to(key[1])
            log_abar = torch.cat([betas.new_zeros(1), torch.cumsum(torch.log1p(-betas), 0)])
            j = torch.arange(n + 1, device=key[1])
            tau = (2 * j * T + n) // (2 * n)  # round(j T / n): strictly increasing for n <= T
            lab = log_abar[tau]
            # composed step alpha = abar_{tau_j} / abar_{tau_{j-1}}; abar can be exactly 0 only at tau = T
            la = torch.zeros_like(lab)
            la[1:] = torch.where(torch.isinf(lab[1:]), lab[1:], lab[1:] - lab[:-1])
            self._grids[key] = Grid(tau, lab, _log1mexp(lab), la, _log1mexp(la))
        return self._grids[key]

    # ---- the pieces of the bound ------------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, log_abar: torch.Tensor, generator=None) -> torch.Tensor:
        """x_t ~ Cat(abar x_0 + (1 - abar)/K): keep x_0 with probability abar, else a uniform class."""
        keep = torch.rand(x0.shape, generator=generator, dtype=torch.float64, device=x0.device)
        keep = keep < expand_to(log_abar.exp(), x0)
        noise = torch.randint(self.K, x0.shape, generator=generator, device=x0.device)
        return torch.where(keep, x0, noise)

    def x0_logits(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ln x0_hat (B, *S, K), float32: the network sees one-hot x_t and t = tau/T in [0, 1]."""
        h = F.one_hot(x_t, self.K).float()
        return torch.log_softmax(call_net(self.net, h, t, self.spec.shape, self.K, self.name), -1)

    def log_posterior(self, x_t: torch.Tensor, x0, g: Grid, j: torch.Tensor) -> torch.Tensor:
        """ln theta~(x_t, x_0) for the step tau_{j-1} <- tau_j (per-example j >= 1), (B, *S, K).

        x0 is either class indices (the forward posterior) or log-probabilities ln x0_hat (the reverse kernel).
        """
        log_fwd = _log_kernel(x_t, g.log_a[j], g.log_1m_a[j], self.K)
        if x0.is_floating_point():
            log_prev = _log_mix(x0, g.log_abar[j - 1], g.log_1m_abar[j - 1], self.K)
        else:
            log_prev = _log_kernel(x0, g.log_abar[j - 1], g.log_1m_abar[j - 1], self.K)
        return torch.log_softmax(log_fwd + log_prev, -1)

    def prior_kl(self, B: int, device: torch.device | str | None = None) -> torch.Tensor:
        """KL(q(x_T | x_0) || Cat(1/K)) summed over D, closed form in float64 (the same for every x_0)."""
        K, lab = self.K, self.grid(1, device).log_abar[-1]
        p_miss = torch.exp(_log1mexp(lab)) / K
        p_hit = lab.exp() + p_miss
        kl = torch.special.xlogy(p_hit, p_hit * K) + (K - 1) * torch.special.xlogy(p_miss, p_miss * K)
        return (self.spec.ndim * kl).float().expand(B).clone()

    def step_term(self, x0: torch.Tensor, j: torch.Tensor, n: int, generator=None) -> torch.Tensor:
        """Term j of the n-step bound, per example (B,) nats, one network pass; j (B,) in 1..n.

        j = 1: decoder -ln p(x_0 | x_{tau_1});  j >= 2: KL(theta~(x_t, x_0) || theta~(x_t, x0_hat)), x_t ~ q(.|x_0).
        """
        return self._step_term_and_x0_nll(x0, j, n, generator)[0]

    def _step_term_and_x0_nll(self, x0: torch.Tensor, j: torch.Tensor, n: int, generator=None):
        """(term j of the n-step bound, sum_i -ln x0_hat(x_t, t)_i[x0_i]) per example, from one network pass."""
        g = self.grid(n, x0.device)
        x_t = self.q_sample(x0, g.log_abar[j], generator)
        logp0 = self.x0_logits(x_t, g.tau[j].double() / self.T)
        x0_nll = -logp0.gather(-1, x0.unsqueeze(-1)).squeeze(-1).flatten(1).sum(1)
        log_p = self.log_posterior(x_t, logp0, g, j)
        decoder = -log_p.gather(-1, x0.unsqueeze(-1)).squeeze(-1)
        log_q = self.log_posterior(x_t, x0, g, j)
        q = log_q.exp()
        kl = (q * (torch.where(q > 0, log_q, torch.zeros_like(log_q)) - log_p)).sum(-1)
        per_dim = torch.where(expand_to(j == 1, x0), decoder, kl)
        return per_dim.flatten(1).sum(1), x0_nll

    def step_terms(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> torch.Tensor:
        """Every term of the n-step bound, (B, n): column j - 1 is term j (column 0 the decoder); n passes."""
        self._check(x)
        n = self.resolve_steps(n_steps)
        cols = [self.step_term(x, torch.full((x.shape[0],), j, device=x.device), n, generator) for j in range(1, n + 1)]
        return torch.stack(cols, 1)

    def full_bound_terms(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> dict[str, torch.Tensor]:
        """The full n-step bound term by term (n network passes): prior, decoder, diffusion (sum over j >= 2)."""
        steps = self.step_terms(x, n_steps, generator)
        return {"prior": self.prior_kl(x.shape[0], x.device), "decoder": steps[:, 0], "diffusion": steps[:, 1:].sum(1)}

    def full_bound(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> torch.Tensor:
        """The n-step NELBO computed term by term (n network passes per example), nats."""
        return sum(self.full_bound_terms(x, n_steps, generator).values())

    # ---- the contract -----------------------------------------------------------------------------------
    def _check(self, x: torch.Tensor) -> None:
        self.check_batch(x)
        check_values(x, self.K, self.name)

    def sample_steps(self, B: int, n: int, device=None, generator=None) -> torch.Tensor:
        """j ~ U{1..n} per example, iid or stratified (j_b = floor(n u_b) + 1, u_b = (u + b/B) mod 1)."""
        return sample_steps(B, n, self.t_sampling, device, generator)

    def bound_terms(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> dict[str, torch.Tensor]:
        """One draw of the one-pass estimator prior + n term_j, j ~ U{1..n}, by term (nats per example): prior;
        decoder n term_1 when j = 1 (else 0); diffusion n term_j when j >= 2 (else 0). They sum to `nll`."""
        self._check(x)
        n = self.resolve_steps(n_steps)
        j = self.sample_steps(x.shape[0], n, x.device, generator)
        term = n * self.step_term(x, j, n, generator)
        zero = torch.zeros_like(term)
        return {"prior": self.prior_kl(x.shape[0], x.device), "decoder": torch.where(j == 1, term, zero),
                "diffusion": torch.where(j >= 2, term, zero)}

    def nll(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> torch.Tensor:
        """Unbiased one-pass estimate of the n-step NELBO: prior + n * term_j, j ~ U{1..n} per example."""
        return sum(self.bound_terms(x, n_steps, generator).values())

    def loss(self, x: torch.Tensor, n_steps: int | None = None, generator=None) -> torch.Tensor:
        """Training objective: the NELBO estimate itself, on the training grid by default (Hoogeboom et al.); with
        `aux_weight` lambda > 0, D3PM's hybrid loss (Austin et al. 2021, arXiv 2107.03006, eq. 5)
            L_lambda = L_vb + lambda E_t E_q(x_t|x_0)[-ln x0_hat(x_t, t)[x_0]],   t ~ U{1..T},
        estimated from the same pass as the bound: prior + n term_j + lambda aux_j, j ~ U{1..n}, where aux_j =
        sum_i -ln x0_hat(x_{tau_j}, tau_j / T)_i[x0_i] (`aux_terms`). As in eq. 5 the auxiliary term is an
        expectation over t, NOT scaled by n like the bound's estimate (D3PM's code adds hybrid_coeff * ce_t to the
        per-step vb_t, which is lambda_code = n lambda here): on text_hmm, lambda = 100 (0.1 in the code's scale)
        gave 6.1 BPC against 4.06 without. The auxiliary term is never part of `nll` or any bound; with lambda = 0
        (the default) this is `nll` itself."""
        if self.aux_weight == 0.0:
            return self.nll(x, n_steps, generator)
        terms, aux = self.aux_terms(x, n_steps, generator)
        return sum(terms.values()) + self.aux_weight * aux

    def aux_terms(self, x: torch.Tensor, n_steps: int | None = None, generator=None):
        """(bound_terms, aux) from one draw: the bound terms exactly as `bound_terms` draws them (same random order,
        so the same generator gives the same values) and aux = sum_i -ln x0_hat(x_t, t)_i[x0_i] (B,) at the same
        (j, x_t): a one-pass estimate of E_j E_q[-ln x0_hat(x_{tau_j}, tau_j / T)[x_0]], j ~ U{1..n}."""
        self._check(x)
        n = self.resolve_steps(n_steps)
        j = self.sample_steps(x.shape[0], n, x.device, generator)
        term, x0_nll = self._step_term_and_x0_nll(x, j, n, generator)
        term = n * term
        zero = torch.zeros_like(term)
        terms = {"prior": self.prior_kl(x.shape[0], x.device), "decoder": torch.where(j == 1, term, zero),
                 "diffusion": torch.where(j >= 2, term, zero)}
        return terms, x0_nll

    @torch.no_grad()
    def sample(self, num: int, n_steps: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral sampling on the n-step sub-grid: x_T ~ Cat(1/K), then x_{tau_{j-1}} ~ theta~(x_{tau_j}, x0_hat)."""
        n = self.resolve_steps(n_steps)
        dev = self.device
        g = self.grid(n, dev)
        x = torch.randint(self.K, (num, *self.spec.shape), generator=generator, device=dev)
        for step in range(n, 0, -1):
            j = torch.full((num,), step, device=dev)
            logp0 = self.x0_logits(x, g.tau[j].double() / self.T)
            x = gumbel_argmax(self.log_posterior(x, logp0, g, j), generator)
        return x


@register_method("multinomial_diffusion")
def build_multinomial_diffusion(
    spec: DataSpec,
    backbone: str = "mlp",
    backbone_kwargs: dict | None = None,
    net: nn.Module | None = None,
    **hyperparameters,
) -> MultinomialDiffusion:
    """Factory: a shared backbone with K one-hot input features and K output logits (x_0 prediction)."""
    return build_discrete(MultinomialDiffusion, spec, backbone, backbone_kwargs, net, **hyperparameters)
