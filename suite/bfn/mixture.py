"""The discretised receiver's log-density, fused (MATH.md s.4).

For each element (a pixel of one example) with output distribution p_O = discretised N(mu, sigma^2)
over K bins and sender accuracy alpha, the receiver is the 1-D mixture

    p_R(y) = sum_k p_O(k) N(y | k_c, 1/alpha).

`mixture_lse` returns, per element, the mean over S sender samples y_s of

    Lambda = LSE_k( ln p_O(k) - alpha (y_s - k_c)^2 / 2 ),

i.e. ln p_R(y_s) up to the Gaussian normaliser ln sqrt(alpha / 2 pi), which cancels against p_S in the
n-step loss. Bin probabilities below P_MIN = 1e-30 are raised to P_MIN (they underflow float32 anyway): the
receiver's mass exceeds 1 by < K * P_MIN, a negligible slack in the bound, and those bins get no gradient.

It works through the elements in chunks, so the (S x B x D x K) tensor of the obvious implementation never
exists, and it computes d Lambda / d(mu, sigma) in the same pass (closed form,
summation by parts over the bin edges), so backward stores two numbers per element, not K.
"""

from __future__ import annotations

import math

import torch

from suite.bfn.dgauss import centres, edges

Tensor = torch.Tensor
_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
P_MIN = 1e-30
_ZERO = torch.zeros(())
_LIMITS = {torch.float32: (9.0, -87.0), torch.float64: (26.0, -700.0)}  # (max |w|, min exponent)


def _row_constants(mu, sigma, alpha, y, K):
    """Per-element scalars, computed once for all rows (not per chunk): see _chunk_stats."""
    h = 2.0 / K
    inv = _SQRT1_2 / sigma
    ks = torch.clamp(torch.floor((mu + 1.0) / h), 0, K - 1).long()  # the bin holding mu
    root = torch.sqrt(0.5 * alpha)
    near = (2 * torch.clamp(torch.round((y + 1.0) * K / 2 - 0.5), 0, K - 1) + 1) / K - 1  # centre nearest y
    m = ((near - y) * root).square_()  # -max_k of the kernel exponent -alpha (y - k_c)^2 / 2
    return inv, -mu * inv, ks, root, -y * root, m


def _chunk_stats(rows, consts, c, e, need_grad, buf, w_max, exp_min):
    """Lambda (and its gradients) for the elements `rows` (a slice): consts from _row_constants.

    A short run of mostly in-place passes over preallocated (R, K) buffers `buf` (reused for every chunk:
    writing into fresh allocations costs page faults that would outweigh the arithmetic); factors constant
    per row (1/2, 1/sqrt(2 pi), 1/p_R for one sample) are folded into per-row scalars at the end.
    """
    inv, mu_inv, ks, root, y_root, m = (v[..., rows] for v in consts)
    S, R, K = m.shape[0], m.shape[1], c.shape[0]
    w, aw, T2, p2, p2c, d, v = (b[:R] for b in buf[:7])
    # w_j = (e_j - mu) / (sigma sqrt 2): erfc(|w|) = 2 Phi(-|z_j|) is an edge's tail mass, no cancellation.
    # Clamping |w| (float32: 9) and exponents (float32: -87) keeps erfc and exp out of the denormal range
    # (~100x slower on x86); the floors (erfc(9) = 4e-37, e^-81 = 7e-36, e^-87 = 2e-38) only touch bins
    # far below P_MIN, which are floored anyway, and terms < 1e-7 of the smallest possible sum.
    torch.addcmul(mu_inv[:, None], e, inv[:, None], out=w)
    torch.abs(w, out=aw).clamp_(max=w_max)
    T2[:, 0], T2[:, K] = 0.0, 0.0  # the two open ends (mass 0)
    torch.erfc(aw, out=T2[:, 1:K])
    # bins entirely below or above the mean: |T_hi - T_lo|; the bin holding it: 1 - T_lo - T_hi
    torch.sub(T2[:, 1:], T2[:, :-1], out=p2).abs_()  # 2 p_k
    ks = ks[:, None]
    p2.scatter_(1, ks, 2.0 - T2.gather(1, ks) - T2.gather(1, ks + 1))
    # p < P_MIN is raised to P_MIN (the receiver gains < K * P_MIN of mass; such bins underflow float32
    # anyway); they are constants then, so they get no gradient: p2 keeps 0 there
    torch.clamp(p2, min=2.0 * P_MIN, out=p2c)
    # sum_k p_k N_k is taken relative to the largest kernel value, exp(-alpha (y - k_c)^2 / 2) at the centre
    # nearest y: that term alone is >= P_MIN, so the sum never underflows, and no ln p_k is needed
    lam = torch.zeros(R, dtype=w.dtype, device=w.device)
    Racc, inv_ssum = None, None
    for s_idx in range(S):
        torch.addcmul(y_root[s_idx, :, None], c, root[:, None], out=d)  # (k_c - y) sqrt(alpha / 2)
        torch.addcmul(m[s_idx, :, None], d, d, value=-1.0, out=v).clamp_(min=exp_min).exp_()  # N_k / N_max
        ssum = torch.mul(p2c, v, out=d).sum(1)  # 2 p_R(y) / N_max
        lam += ssum.log() - m[s_idx]
        if need_grad:  # N_k / p_R, summed over samples
            if S == 1:
                Racc, inv_ssum = v, 1.0 / ssum  # normalised at the end, per row
            elif s_idx == 0:
                Racc = torch.mul(v, (1.0 / ssum)[:, None], out=buf[7][:R])
            else:
                Racc.addcmul_(v, (1.0 / ssum)[:, None])
    lam = lam / S - math.log(2.0)
    if not need_grad:
        return lam, None, None
    # d ln p_R / d p_k = N_k / p_R; with dp_k/dmu = -(phi(z_k) - phi(z_{k-1}))/sigma, summation by parts:
    # d/dmu = -(1/sigma) sum_j phi(z_j) (W_j - W_{j+1}),  d/dsigma = -(1/sigma) sum_j z_j phi(z_j) (...)
    torch.nn.functional.threshold_(p2, 2.0 * P_MIN, 0.0)
    W = Racc.mul_(p2).div_(p2c)  # N_k / (2 p_R) up to a per-row scale; 0 where floored (cheaper than a select)
    dW = d.view(-1)[: R * (K - 1)].view(R, K - 1)
    phi = torch.addcmul(_ZERO.to(aw), aw, aw, value=-1.0, out=aw).exp_()  # sqrt(2 pi) phi(z_j)
    torch.sub(W[:, :-1], W[:, 1:], out=dW).mul_(phi)
    scale = (-2.0 * _INV_SQRT_2PI * math.sqrt(2.0) / S) * inv  # -2 / (sqrt(2 pi) S sigma)
    if inv_ssum is not None:
        scale = scale * inv_ssum
    g_mu = dW.sum(1) * scale
    g_sigma = dW.mul_(w).sum(1) * (scale * math.sqrt(2.0))
    return lam, g_mu, g_sigma


class _MixtureLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, sigma, alpha, y, K, chunk):
        need = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        with torch.autocast(mu.device.type, enabled=False):
            c, e = centres(K, mu.device, mu.dtype), edges(K, mu.device, mu.dtype)
            w_max, exp_min = _LIMITS.get(mu.dtype, _LIMITS[torch.float32])
            consts = _row_constants(mu, sigma, alpha, y, K)
            chunk = min(chunk, mu.shape[0])
            widths = (K - 1, K - 1, K + 1, K, K, K, K) + ((K,) if need and y.shape[0] > 1 else ())
            buf = [torch.empty(chunk, wd, device=mu.device, dtype=mu.dtype) for wd in widths]
            lam = torch.empty_like(mu)
            g_mu = torch.empty_like(mu) if need else None
            g_sigma = torch.empty_like(mu) if need else None
            for i in range(0, mu.shape[0], chunk):
                rows = slice(i, i + chunk)
                out = _chunk_stats(rows, consts, c, e, need, buf, w_max, exp_min)
                lam[rows] = out[0]
                if need:
                    g_mu[rows], g_sigma[rows] = out[1], out[2]
        ctx.save_for_backward(g_mu, g_sigma)
        return lam

    @staticmethod
    def backward(ctx, grad):
        g_mu, g_sigma = ctx.saved_tensors
        return grad * g_mu, grad * g_sigma, None, None, None, None


def mixture_lse(mu: Tensor, sigma: Tensor, alpha: Tensor, y: Tensor, K: int, chunk_elems: int = 1 << 18) -> Tensor:
    """Mean over samples of LSE_k(ln p_O(k) - alpha (y_s - k_c)^2 / 2), per element.

    mu, sigma, alpha: (N,) float32; y: (S, N) sender samples. Differentiable in mu and sigma.
    `chunk_elems` bounds the temporaries (rows x K); the default keeps them within the L2/L3 cache.
    """
    if y.dim() != 2 or y.shape[1] != mu.shape[0]:
        raise ValueError(f"y must be shaped (S, N) = (S, {mu.shape[0]}), got {tuple(y.shape)}")
    chunk = max(1, chunk_elems // K)
    return _MixtureLSE.apply(mu, sigma, alpha.to(mu.dtype), y.to(mu.dtype), K, chunk)


def mixture_lse_reference(mu: Tensor, sigma: Tensor, alpha: Tensor, y: Tensor, K: int) -> Tensor:
    """The same quantity by autograd over the full (S, N, K) tensor: the definition, for tests."""
    from suite.bfn.dgauss import bin_probs

    lnp = bin_probs(mu, sigma, K).clamp(min=P_MIN).log()
    c = centres(K, mu.device, mu.dtype)
    kern = -0.5 * alpha[None, :, None] * (y[..., None] - c) ** 2
    return torch.logsumexp(lnp + kern, -1).mean(0)
