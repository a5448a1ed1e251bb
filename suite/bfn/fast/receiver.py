"""The discretised receiver's log-density, fused and windowed: the accelerated L^n term (docs/bfn.md).

For each element (a pixel of one example) with output distribution p_O = discretised N(mu, sigma^2)
over K bins and sender accuracy alpha, the receiver is the 1-D mixture

    p_R(y) = sum_k p_O(k) N(y | k_c, 1/alpha).

`mixture_lse` returns, per element, the mean over S sender samples y_s of

    Lambda = LSE_k( ln p_O(k) - alpha (y_s - k_c)^2 / 2 ),

i.e. ln p_R(y_s) up to the Gaussian normaliser ln sqrt(alpha / 2 pi), which cancels against p_S in the
n-step loss. Every bin probability is raised by P_MIN = 1e-30 (a bin below that underflows float32 anyway),
so the sum never underflows: the receiver's mass is 1 + K * P_MIN, a negligible slack in the bound.

Three things make it cheap, each exact to within TOL (below) by a bound checked per element:

- Closed form where it is provably exact: by Poisson summation, the sum over the grid of bin centres
  equals (1/h) times an integral, sqrt(2 pi / alpha) / h * [Phi((h/2 - Delta) / s_tot) - Phi((-h/2 - Delta)
  / s_tot)] with Delta = y - mu and s_tot^2 = sigma^2 + 1/alpha, up to an aliasing term that falls like
  exp(-2 pi^2 s^2 / h^2) (s^2 = sigma^2 / (1 + alpha sigma^2)) and an end term from the two end bins, which
  take p_O's tails. Both are bounded rigorously (`_analytic`); elements where the bounds are below TOL of
  the sum take this O(1) path.
- Windowed: the terms p_O(k) N(y | k_c, 1/alpha) are, as a function of k, close to a Gaussian centred
  between mu and y with standard deviation s, so late in the flow (large alpha) or for a confident network
  (small sigma) only a few bins matter. Each element gets a window of bins around that centre, C s wide on
  each side (C = 7 in float32), rounded up to one of a few widths; rows of one width are processed
  together. A rigorous O(1) bound on everything the window leaves out (value and both gradients:
  `_omitted_bound`) sends any element whose omitted part could exceed TOL of its window's sum to the full
  sum over all K bins.
- Fused: d Lambda / d(mu, sigma) is computed in the same pass (closed form, summation by parts over the
  bin edges), so backward stores two numbers per element, not K, and the (S x N x K) tensor of the obvious
  implementation never exists (rows are processed in cache-sized chunks).

TOL is 1e-7 in float32 (below float32's own rounding of a sum of K terms) and 1e-13 in float64; the tests
compare every path with the reference (`suite.bfn.discretised.receiver_lse_reference`, the chunked O(K) sum in
log space by autograd) in float64, and show that each bound is what keeps its path exact (with the bounds
switched off, the same inputs give wrong values). Measured against that reference on CPU
(tests/bench/test_bench_khat_routes.py, 25,088 elements, one thread, value and gradient): 2.0x at K = 16,
10x at K = 256.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch

from suite.bfn.dgauss import P_MIN

Tensor = torch.Tensor
_SQRT2 = math.sqrt(2.0)
_SQRT1_2 = 1.0 / _SQRT2
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_ZERO = torch.zeros(())
_LIMITS = {torch.float32: (9.0, -87.0), torch.float64: (26.0, -700.0)}  # (max |w|, min exponent)
TOL = {torch.float32: 1e-7, torch.float64: 1e-13}  # omitted part / computed sum above which a path is refused
WINDOW_C = {torch.float32: 7.0, torch.float64: 9.0}  # half-width of a window in product std devs
MIN_WINDOWED_K = 64  # below this, every element takes all K bins
ANALYTIC_MIN_BINS = 32  # the closed form is tried for windows at least this wide (for all rows when K < 64)
ANALYTIC, WINDOW, FULL = 0, 1, 2  # how an element's sum was computed (receiver_paths)
# max over z of |z| phi(z) and of |1 - z^2| phi(z): bounds on sigma |dp_k / dmu|, sigma |dp_k / dsigma| per bin
_ZPHI_MAX, _D2PHI_MAX = 0.2420, 0.3990


def window_widths(K: int) -> list[int]:
    """Window widths tried, ascending: 8, 12, 16, 24, 32, 48, ... below K, then K itself."""
    if K < MIN_WINDOWED_K:
        return [K]
    out, w = [], 8
    while w < K:
        out += [v for v in (w, w + w // 2) if v < K]
        w *= 2
    return out + [K]


def _window_requests(mu, sigma, alpha, y, K, dtype):
    """(width in bins, centre in bin coordinates) of each element's window: C s either side of the centre
    of the product N(mu, sigma^2) N(y, 1/alpha), spanning all S samples."""
    h = 2.0 / K
    var_x, var_k = sigma * sigma, 1.0 / alpha
    tot = var_x + var_k
    s_bins = torch.sqrt(var_x * var_k / tot) / h
    mstar = (mu * var_k + y * var_x) / tot  # (S, N)
    pos_lo = (mstar.amin(0) + 1.0) / h - 0.5
    pos_hi = (mstar.amax(0) + 1.0) / h - 0.5
    half = WINDOW_C.get(dtype, WINDOW_C[torch.float32]) * s_bins + 1.0
    lo, hi = (pos_lo - half).clamp(min=-0.5), (pos_hi + half).clamp(max=K - 0.5)
    width = torch.nan_to_num(hi - lo + 1.0, nan=float(K), posinf=float(K)).clamp(1, K)
    return width, 0.5 * (lo + hi)


def _analytic(mu, sigma, alpha, y, K, tol):
    """The mixture in closed form by Poisson summation, with a rigorous bound on what that leaves out.

    With P(u) = Phi((u + h/2 - mu) / sigma) - Phi((u - h/2 - mu) / sigma) (so p_k = P(k_c) for interior
    bins) and N(u) = exp(-alpha (u - y)^2 / 2), the sum over the infinite grid of centres is
        sum_k P(k_c) N(k_c) = (1/h) int P N du + aliasing = sqrt(2 pi / alpha) / h * M + aliasing,
        M = Phi((h/2 - Delta) / s_tot) - Phi((-h/2 - Delta) / s_tot),  Delta = y - mu,  s_tot^2 = sigma^2 + 1/alpha
    (the integral is P(|U - V| <= h/2) for U ~ N(y, 1/alpha), V ~ N(mu, sigma^2)). The Fourier transform of
    P N is bounded by h (sigma_k / s_tot) exp(-2 pi^2 s^2 xi^2), s^2 = sigma^2 / (1 + alpha sigma^2), so the
    aliasing is at most 2 (sigma_k / s_tot) q / (1 - q) with q = exp(-2 pi^2 s^2 / h^2), and its derivatives
    (times sigma) carry the extra factors 2 pi sigma m / h + 1 and (2 pi sigma m / h)^2 + 1 at frequency m/h.
    The end bins take p_O's tails instead of P at their centres: the difference, sum over the grid points
    beyond an end of P(k_c) (N(end centre) - N(k_c)), is bounded by p_O's mass beyond that end times the
    largest kernel value there (and, for the gradients, by phi and z phi at the end's edge).
    Rows whose bounds stay below `tol` of the main term, for every sample, take this path: O(1) per element,
    in float64 (M is a difference of nearby CDF values). Returns (ok, Lambda, dLambda/dmu, dLambda/dsigma).
    """
    f64 = torch.float64
    mu, sigma, alpha, y = mu.to(f64), sigma.to(f64), alpha.to(f64), y.to(f64)
    h = 2.0 / K
    var_k = 1.0 / alpha
    var_t = sigma * sigma + var_k
    s_tot = torch.sqrt(var_t)
    q = torch.exp((-2.0 * math.pi**2 * (sigma * sigma * var_k / var_t) / h**2).clamp(min=-700.0))
    A = 2.0 * math.pi * sigma / h
    r = 1.0 / (1.0 - q)
    alias = 2.0 * torch.sqrt(var_k / var_t) * q * r * (1.0 + (A + 1.0) * r + (A * A + 1.0) * (1.0 + q) * r * r)
    delta = y - mu  # (S, N)
    a, b = (-0.5 * h - delta) / s_tot, (0.5 * h - delta) / s_tot
    # M from the tail on the far side of the mode of U - V (no cancellation): erfc(lo) - erfc(hi) / 2
    upper = (a + b) > 0
    lo, hi = torch.where(upper, a, -b), torch.where(upper, b, -a)
    M = 0.5 * (torch.erfc((lo * _SQRT1_2).clamp(max=26.0)) - torch.erfc((hi * _SQRT1_2).clamp(max=26.0)))
    const = torch.log(torch.sqrt(2.0 * math.pi * var_k) / h)
    main = torch.exp(const) * M
    ends = K * P_MIN  # every bin raised by P_MIN (kernel values <= 1)
    for side in (-1, 1):  # clamped arguments keep erfc / exp off their slow underflow paths (bounds only grow)
        z = (side - mu) / sigma  # the outer edge -1 or +1, standardised
        tail = (z * side) >= 0  # beyond that edge lies a Gaussian tail of p_O
        za = z.abs().clamp(max=37.0)
        half_T = 0.5 * torch.erfc(za * _SQRT1_2)
        mass = torch.where(tail, half_T, 1.0 - half_T)
        phi = torch.exp(-0.5 * za * za) * _INV_SQRT_2PI
        phi_max = torch.where(tail, phi, _INV_SQRT_2PI)
        zphi_max = torch.where(tail & (za >= 1.0), za * phi, _ZPHI_MAX)
        # the largest kernel value at or beyond the end bin's centre: 1 if y lies there, else at that centre
        dist = ((y - side * (1.0 - 0.5 * h)) * -side).clamp(min=0.0)
        n_sup = torch.exp((-0.5 * alpha * dist * dist).clamp(min=-700.0))
        ends = ends + n_sup * (mass + 2.0 * phi_max + 3.0 * zphi_max)
    ok = ((alias + ends) <= tol * main).all(0) & (q < 0.5)
    lam = (const + M.log()).mean(0)
    phi_a, phi_b = (torch.exp((-0.5 * v * v).clamp(min=-700.0)) * _INV_SQRT_2PI for v in (a, b))
    g_mu = ((phi_b - phi_a) / (s_tot * M)).mean(0)
    g_sigma = (-(b * phi_b - a * phi_a) / M).mean(0) * (sigma / var_t)
    return ok, lam, g_mu, g_sigma


@dataclass
class _Plan:
    """Per-row constants of the rows summed over windows, in processing order (rows of one window width are
    contiguous, so a chunk is a slice). Row r covers bins start[r] .. start[r] + width[r] - 1."""

    rows: Tensor  # indices into the batch
    start: Tensor
    width: Tensor
    inv: Tensor  # 1 / (sigma sqrt 2)
    root: Tensor  # sqrt(alpha / 2)
    alpha: Tensor
    y: Tensor  # (S, R)
    nk: Tensor  # (S, R): the bin whose centre is nearest y
    m: Tensor  # (S, R): alpha (y - c)^2 / 2 at the window's centre nearest y (the window's largest kernel)
    w0: Tensor  # (e_start - mu) / (sigma sqrt 2)
    y_off: Tensor  # (S, R): (c_start - y) sqrt(alpha / 2)
    k_in: Tensor  # (R, 1): the window's bin holding mu (clamped)
    inside: Tensor  # (R, 1): mu's bin lies in the window
    first_open: Tensor  # the window starts at bin 1: its lower edge is -inf
    last_open: Tensor  # the window ends at bin K: its upper edge is +inf


def _plan(mu, sigma, alpha, y, K, rows, start, width) -> _Plan:
    h, dt = 2.0 / K, mu.dtype
    mu, alpha, y = mu[rows], alpha[rows], y[:, rows]
    inv = _SQRT1_2 / sigma[rows]
    root = torch.sqrt(0.5 * alpha)
    startf = start.to(dt)
    nk = torch.clamp(torch.round((y + 1.0) / h - 0.5), 0, K - 1).long()
    n_win = torch.minimum(torch.maximum(nk, start), start + width - 1)
    k_in = torch.clamp(torch.floor((mu + 1.0) / h), 0, K - 1).long() - start
    return _Plan(
        rows=rows, start=start, width=width, inv=inv, root=root, alpha=alpha, y=y, nk=nk,
        m=(((2 * n_win + 1).to(dt) / K - 1.0 - y) * root).square(),
        w0=(startf * h - 1.0 - mu) * inv,
        y_off=((startf + 0.5) * h - 1.0 - y) * root,
        k_in=torch.minimum(k_in.clamp(min=0), width - 1)[:, None],
        inside=((k_in >= 0) & (k_in < width))[:, None],
        first_open=start == 0,
        last_open=start + width == K,
    )  # fmt: skip


def _omitted_bound(p: _Plan, K, ssum, tol):
    """True for the rows whose bins outside their window could add more than `tol` of the window's sum to
    p_R or (times sigma) to its gradients, for any sender sample: those are recomputed over all K bins.

    Per row, O(1): for the bins below the window (and likewise above) with n_near the largest kernel value
    among them and n_sum <= n_near / (1 - exp(-alpha h d)) their sum (d >= 0 the distance from y to the
    nearest of them; the exponents fall at least linearly, in steps of alpha h d), p_O's mass beyond the
    window's edge P (a Gaussian tail), and per interior bin p_k <= h max density, sigma |dp_k / dmu| +
    sigma |dp_k / dsigma| <= h / sigma max (|phi'| + |(z phi)'|) beyond the edge:
        value <= P n_end + (min(P, h max density) + P_MIN) n_sum + P_MIN n_end
        grad  <= (1 + |z|) phi(z) n_end + h / sigma (|z| + z^2) phi(z) n_sum     (z the edge, |z| >= 2)
    where n_end is the kernel at the outermost bin (which takes a tail of p_O) and the bounds on phi and its
    derivatives fall back to their global maxima when the edge is within 2 sigma of mu or on mu's far side.
    `ssum` (S, R) is 2 p_R / N_max over the window, N_max the largest kernel value in it.
    """
    h, dt = 2.0 / K, p.inv.dtype
    w_max, exp_min = _LIMITS.get(dt, _LIMITS[torch.float32])  # off the slow underflow paths; bounds only grow
    h_over_sigma = h * _SQRT2 * p.inv
    total = torch.zeros_like(ssum)
    for side in (-1, 1):
        count = p.start if side < 0 else K - p.start - p.width  # bins beyond this end of the window
        w_edge = p.w0 if side < 0 else p.w0 + p.width.to(dt) * h * p.inv
        tail_side = (w_edge * side) >= 0  # the edge lies on the far side of mu: a Gaussian tail beyond it
        wa = w_edge.abs().clamp(max=w_max)
        half_T = 0.5 * torch.erfc(wa)
        mass = torch.where(tail_side, half_T, 1.0 - half_T)
        z = _SQRT2 * wa
        phi = torch.exp(-(wa * wa)) * _INV_SQRT_2PI
        dens = h_over_sigma * torch.where(tail_side, phi, _INV_SQRT_2PI)
        d_int = h_over_sigma * torch.where(tail_side & (z >= 2.0), (z + z * z) * phi, _ZPHI_MAX + _D2PHI_MAX)
        d_end = torch.where(tail_side & (z >= 1.0), (1.0 + z) * phi, _ZPHI_MAX + _D2PHI_MAX)
        k_near = torch.minimum(p.nk, count - 1) if side < 0 else torch.maximum(p.nk, K - count)  # (S, R)
        n_near = torch.exp((p.m - (((2 * k_near + 1).to(dt) / K - 1.0 - p.y) * p.root).square()).clamp(min=exp_min))
        n_end = torch.exp((p.m - ((side * (1.0 - h / 2) - p.y) * p.root).square()).clamp(min=exp_min))
        first = p.start - 1 if side < 0 else p.start + p.width  # the nearest bin beyond
        d = ((p.y - ((2 * first + 1).to(dt) / K - 1.0)) * -side).clamp(min=0.0)
        ratio = torch.where(d > 0, 1.0 / (-torch.expm1((-p.alpha * h * d).clamp(min=exp_min))).clamp(min=1e-30), float("inf"))
        n_sum = n_near * torch.minimum(ratio, count.to(dt))
        value = mass * n_end + (torch.minimum(mass, dens) + P_MIN) * n_sum + P_MIN * n_end
        grad = d_end * n_end + d_int * n_sum
        total += torch.where(count > 0, value + grad, 0.0)
    return (~(total <= tol * 0.5 * ssum)).any(0)  # NaN or inf counts as too much


def _window_stats(p: _Plan, a, b, Wb, K, need_grad, buf, consts):
    """Lambda, its gradients and the window sums 2 p_R / N_max (S, R) for the plan's rows a .. b - 1, all of
    window width Wb.

    A short run of mostly in-place passes over preallocated buffers `buf` (flat, reused for every chunk:
    writing into fresh allocations costs page faults that would outweigh the arithmetic); factors constant
    per row (1/2, 1/sqrt(2 pi), 1/p_R for one sample) are folded into per-row scalars at the end.
    """
    jj, w_max, exp_min = consts
    h = 2.0 / K
    inv, root, m, y_off = p.inv[a:b], p.root[a:b], p.m[:, a:b], p.y_off[:, a:b]
    first_open, last_open = p.first_open[a:b], p.last_open[a:b]
    S, R = m.shape

    def view(name, cols):  # one buffer per name (_SLOTS), never shared between two quantities
        return buf[_SLOTS.index(name)][: R * cols].view(R, cols)

    w, aw, T = view("w", Wb + 1), view("aw", Wb + 1), view("T", Wb + 1)
    p2, p2c, v = view("p2", Wb), view("p2c", Wb), view("v", Wb)
    # w_j = (e_j - mu) / (sigma sqrt 2) at the window's edges e_j = -1 + (start + j) h, j = 0..Wb:
    # erfc(|w|) = 2 Phi(-|z_j|) is an edge's tail mass, no cancellation. Clamping |w| (float32: 9) and
    # exponents (float32: -87) keeps erfc and exp out of the denormal range (~100x slower on x86); the floors
    # (erfc(9) = 4e-37, e^-81 = 7e-36, e^-87 = 2e-38) only touch bin masses far below P_MIN, which every bin
    # is raised by anyway, and terms < 1e-7 of the smallest possible sum.
    torch.addcmul(p.w0[a:b, None], jj[: Wb + 1], (h * inv)[:, None], out=w)
    torch.abs(w, out=aw).clamp_(max=w_max)
    torch.erfc(aw, out=T)
    T[:, 0].masked_fill_(first_open, 0.0)  # the window reaches an end: that edge is -/+ inf
    T[:, Wb].masked_fill_(last_open, 0.0)
    # bins entirely below or above the mean: |T_hi - T_lo|; the bin holding it: 2 - T_lo - T_hi
    torch.sub(T[:, 1:], T[:, :-1], out=p2).abs_()  # 2 p_k
    idx, inside = p.k_in[a:b], p.inside[a:b]
    p2.scatter_(1, idx, torch.where(inside, 2.0 - T.gather(1, idx) - T.gather(1, idx + 1), p2.gather(1, idx)))
    torch.add(p2, 2.0 * P_MIN, out=p2c)  # every bin raised by P_MIN
    # sum_k p_k N_k is taken relative to the largest kernel value in the window, at the centre nearest y:
    # that term alone is >= P_MIN, so the sum never underflows, and no ln p_k is needed
    ssums = torch.empty(S, R, dtype=w.dtype, device=w.device)
    d, pv = view("d", Wb), view("pv", Wb)
    Racc = None
    for s_idx in range(S):
        torch.addcmul(y_off[s_idx, :, None], jj[:Wb], (h * root)[:, None], out=d)  # (k_c - y) sqrt(alpha / 2)
        torch.addcmul(m[s_idx, :, None], d, d, value=-1.0, out=v).clamp_(min=exp_min).exp_()  # N_k / N_max
        ssum = torch.sum(torch.mul(p2c, v, out=pv), 1, out=ssums[s_idx])  # 2 p_R(y) / N_max over the window
        if need_grad and S > 1:  # N_k / p_R, summed over samples
            if s_idx == 0:
                Racc = torch.mul(v, (1.0 / ssum)[:, None], out=view("racc", Wb))
            else:
                Racc.addcmul_(v, (1.0 / ssum)[:, None])
    lam = (ssums.log() - m).mean(0) - math.log(2.0)
    if not need_grad:
        return lam, None, None, ssums
    # d ln p_R / d p_k = N_k / p_R; with dp_k/dmu = -(phi(z_k+1) - phi(z_k))/sigma, summation by parts over
    # the edges j (N_k / p_R := 0 outside the window): d/dmu = -(1/sigma) sum_j phi(z_j) (W_j-1 - W_j),
    # d/dsigma = -(1/sigma) sum_j z_j phi(z_j) (W_j-1 - W_j)
    W = v if S == 1 else Racc  # N_k / (2 p_R), up to a per-row scale for one sample
    dW = view("dW", Wb + 1)
    torch.sub(W[:, :-1], W[:, 1:], out=dW[:, 1:Wb])
    dW[:, 0], dW[:, Wb] = -W[:, 0], W[:, Wb - 1]
    phi = torch.addcmul(_ZERO.to(aw), aw, aw, value=-1.0, out=view("phi", Wb + 1)).exp_()  # sqrt(2 pi) phi(z_j)
    phi[:, 0].masked_fill_(first_open, 0.0)
    phi[:, Wb].masked_fill_(last_open, 0.0)
    dW.mul_(phi)
    scale = (-2.0 * _INV_SQRT_2PI * _SQRT2 / S) * inv  # -2 / (sqrt(2 pi) S sigma)
    if S == 1:
        scale = scale / ssums[0]
    g_mu = dW.sum(1) * scale
    g_sigma = dW.mul_(w).sum(1) * (scale * _SQRT2)
    return lam, g_mu, g_sigma, ssums


_SCRATCH = threading.local()
_SLOTS = ("w", "aw", "T", "p2", "p2c", "v", "d", "pv", "dW", "phi", "racc")  # _window_stats' work buffers


def _scratch(n: int, size: int, device, dtype) -> list[Tensor]:
    """n flat work buffers of `size` elements, kept per thread, device and dtype and reused across calls: fresh
    multi-megabyte allocations come back from the OS zero-filled page by page (page faults on every call)."""
    cache = _SCRATCH.__dict__.setdefault("buffers", {})
    key = (str(device), dtype)
    have = cache.get(key, [])
    if len(have) < n or have[0].numel() < size:
        have = [torch.empty(max(size, have[0].numel() if have else 0), device=device, dtype=dtype) for _ in range(n)]
        cache[key] = have
    return have[:n]


def _forward(mu, sigma, alpha, y, K, chunk_elems, need_grad):
    N, S, dt, dev = mu.shape[0], y.shape[0], mu.dtype, mu.device
    w_max, exp_min = _LIMITS.get(dt, _LIMITS[torch.float32])
    consts = (torch.arange(K + 1, device=dev, dtype=dt), w_max, exp_min)
    tol = TOL.get(dt, TOL[torch.float32])
    lam = torch.empty_like(mu)
    g_mu = torch.empty_like(mu) if need_grad else None
    g_sigma = torch.empty_like(mu) if need_grad else None
    path = torch.full((N,), FULL, dtype=torch.int8, device=dev)
    size = max(min(chunk_elems, N * (K + 1)), K + 1)
    buf = _scratch(len(_SLOTS) if S > 1 and need_grad else len(_SLOTS) - 1, size, dev, dt)  # racc: S > 1 only

    def run(p: _Plan, counts, widths):
        """Sum the plan's rows over their windows, group by group of widths; returns the window sums."""
        ssums, at = [], 0
        for n, Wb in zip(counts, widths, strict=True):
            per = max(1, size // (Wb + 1))
            for i in range(at, at + n, per):
                j = min(i + per, at + n)
                lam_r, gm_r, gs_r, ssum = _window_stats(p, i, j, Wb, K, need_grad, buf, consts)
                r = p.rows[i:j]
                lam[r] = lam_r
                if need_grad:
                    g_mu[r], g_sigma[r] = gm_r, gs_r
                ssums.append(ssum)
            at += n
        return torch.cat(ssums, 1)

    widths = window_widths(K)
    windowed = len(widths) > 1
    if windowed:
        want, centre = _window_requests(mu, sigma, alpha, y, K, dt)
        cand = (want >= ANALYTIC_MIN_BINS).nonzero().squeeze(1)  # narrower windows cost less than the bound
    else:
        cand = torch.arange(N, device=dev)
    if cand.numel():
        ok, lam_a, gmu_a, gsig_a = _analytic(mu[cand], sigma[cand], alpha[cand], y[:, cand], K, tol)
        rows_a = cand[ok]
        lam[rows_a] = lam_a[ok].to(dt)
        if need_grad:
            g_mu[rows_a], g_sigma[rows_a] = gmu_a[ok].to(dt), gsig_a[ok].to(dt)
        path[rows_a] = ANALYTIC
    full = (path != ANALYTIC).nonzero().squeeze(1)
    if windowed and full.numel():
        group = torch.bucketize(want[full], torch.tensor(widths, device=dev, dtype=dt))  # smallest width >= want
        order = torch.argsort(group)
        counts = torch.bincount(group, minlength=len(widths)).tolist()
        n_win = full.numel() - counts[-1]
        rows_w, full = full[order[:n_win]], full[order[n_win:]]
        if n_win:
            width = torch.tensor(widths, device=dev)[group[order[:n_win]]]
            start = torch.clamp(torch.round(centre[rows_w] - 0.5 * (width - 1)), min=0).long()
            start = torch.minimum(start, K - width)
            p = _plan(mu, sigma, alpha, y, K, rows_w, start, width)
            bad = _omitted_bound(p, K, run(p, counts[:-1], widths[:-1]), tol)
            path[rows_w] = WINDOW
            full = torch.cat([full, rows_w[bad]])
    if full.numel():
        zero = torch.zeros_like(full)
        run(_plan(mu, sigma, alpha, y, K, full, zero, zero + K), [full.numel()], [K])
        path[full] = FULL
    return lam, g_mu, g_sigma, path


class _MixtureLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, sigma, alpha, y, K, chunk_elems):
        need = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        with torch.autocast(mu.device.type, enabled=False):
            lam, g_mu, g_sigma, _ = _forward(mu, sigma, alpha, y, K, chunk_elems, need)
        ctx.save_for_backward(g_mu, g_sigma)
        return lam

    @staticmethod
    def backward(ctx, grad):
        g_mu, g_sigma = ctx.saved_tensors
        return grad * g_mu, grad * g_sigma, None, None, None, None


def mixture_lse(mu: Tensor, sigma: Tensor, alpha: Tensor, y: Tensor, K: int, chunk_elems: int = 1 << 18) -> Tensor:
    """Mean over samples of LSE_k(ln p_O(k) - alpha (y_s - k_c)^2 / 2), per element.

    mu, sigma, alpha: (N,) float32 or float64; y: (S, N) sender samples. Differentiable in mu and sigma.
    `chunk_elems` bounds the temporaries (rows x bins); the default keeps them within the L2/L3 cache.
    """
    if y.dim() != 2 or y.shape[1] != mu.shape[0]:
        raise ValueError(f"y must be shaped (S, N) = (S, {mu.shape[0]}), got {tuple(y.shape)}")
    return _MixtureLSE.apply(mu, sigma, alpha.to(mu.dtype), y.to(mu.dtype), K, max(int(chunk_elems), 1))


def mixture_lse_fixed(logp: Tensor, alpha: Tensor, y: Tensor, chunk_elems: int = 1 << 18) -> Tensor:
    """The same quantity for one fixed output distribution shared by all elements (e.g. the prior at t = 0,
    which has no parameters to differentiate): ln p_k (K,) is given, raised by P_MIN like mixture_lse,
    so each bin costs one exp. alpha: (N,), y: (S, N); no gradient."""
    K = logp.shape[0]
    if y.dim() != 2 or y.shape[1] != alpha.shape[0]:
        raise ValueError(f"y must be shaped (S, N) = (S, {alpha.shape[0]}), got {tuple(y.shape)}")
    with torch.no_grad(), torch.autocast(y.device.type, enabled=False):  # the matmul below stays in float32
        dt = y.dtype if y.dtype in (torch.float32, torch.float64) else torch.float32
        exp_min = _LIMITS.get(dt, _LIMITS[torch.float32])[1]
        p = (logp.to(device=y.device, dtype=torch.float64).exp() + P_MIN).to(dt)
        h = 2.0 / K
        jj = torch.arange(K, device=y.device, dtype=dt)
        root = torch.sqrt(0.5 * alpha.to(dt))
        out = torch.zeros(y.shape[1], dtype=dt, device=y.device)
        per = max(1, chunk_elems // K)
        for i in range(0, y.shape[1], per):
            rows = slice(i, i + per)
            for s in range(y.shape[0]):
                ys, rs = y[s, rows].to(dt), root[rows]
                # relative to the kernel at the centre nearest y (>= P_MIN of the sum), exponents floored
                near = (2 * torch.clamp(torch.round((ys + 1.0) / h - 0.5), 0, K - 1) + 1) / K - 1.0
                m = ((near - ys) * rs).square()
                d = torch.addcmul(((h / 2 - 1.0 - ys) * rs)[:, None], jj, (h * rs)[:, None])  # (k_c - y) sqrt(a/2)
                v = torch.addcmul(m[:, None], d, d, value=-1.0).clamp_(min=exp_min).exp_()
                out[rows] += (v @ p).log() - m
        return out / y.shape[0]


def receiver_paths(mu: Tensor, sigma: Tensor, alpha: Tensor, y: Tensor, K: int) -> Tensor:
    """Per element, how mixture_lse computes it: ANALYTIC (0), WINDOW (1) or FULL (2); for tests and benchmarks."""
    with torch.no_grad():
        return _forward(mu, sigma, alpha.to(mu.dtype), y.to(mu.dtype), K, 1 << 18, False)[3]
