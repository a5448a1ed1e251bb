"""BFN for discrete data: K classes per dimension, K >= 2 (MATH.md s.5; BFN paper Sec. 6).

theta lives on the simplex, uniform prior; the sender is N(y | alpha (K e_x - 1), alpha K I), the update
theta' prop. to e^y theta, so we carry z = ln theta + const (the sum of all y so far) and theta = softmax(z):
no underflow for any beta1. beta(t) = beta1 t^2; the flow is theta = softmax(y), y ~ N(beta (K e_x - 1), beta K I).

  L^inf(x) = K beta1 E_t[t ||e_x - e-hat(theta, t)||^2]                                      (paper Eq. 205)
  L^n(x)   = n E_{i, theta, y}[ln p_S(y | x; alpha_i) - ln p_R(y | theta; t_{i-1}, alpha_i)]   (paper Eq. 189-190)
  L^r(x)   = -ln p_O(x | theta; 1)                                                           (MATH.md s.5)

Receivers (`receiver=`):
  "paper"          the K-dim mixture sum_k p_O(k) N(y | alpha (K e_k - 1), alpha K I) (paper Eq. 190). Since
                   ln N(y | alpha (K e_k - 1), alpha K I) = c(y, alpha) + y_k with c free of k (MATH.md s.2),
                   ln p_S - ln p_R = y_x - LSE_k(y_k + ln p_O(k)) per variable: O(K), computed stably.
  "factorised_1d"  the reference code's receiver: a product over coordinates j of 1-D two-component mixtures
                   p_O(j) N(y_j | alpha (K-1), alpha K) + (1 - p_O(j)) N(y_j | -alpha, alpha K). A valid but
                   looser bound (not the sender's marginal); O(K) here, not the reference's K x K tensor.

Network input: 2 theta - 1 (K features); for K = 2 a single feature and a single output logit l with
p_O(1) = sigmoid(l). `input_convention` picks the K = 2 feature: "suite" 2 theta_1 - 1 (this suite's own
networks), "official" 2 theta_0 - 1 = 2 P(class 0) - 1, what the official MNIST checkpoint was trained on
(its flow returns theta_0 only; docs/official.md). For K > 2 both are 2 theta - 1.

Official-code quirks (`quirks=...`, continuous.QUIRKS; shared/reference/official_quirks.md, docs/official.md):
  categorical_floor  L^n's receiver weights p_O as the official code forms them (float32 probabilities; K = 2:
                     (1 - sigmoid(l), sigmoid(l))) through torch's Categorical(probs=): p / sum p clamped to
                     [eps, 1 - eps] (float32 eps 1.19e-7) and renormalised (dgauss.categorical_log_weights)
  sender_samples     L^n averages OFFICIAL_SENDER_SAMPLES = 10 sender draws y per flow draw theta (the official
                     discrete_time_loss's n_samples=10), where the exact path draws one (both unbiased)
  flow_t_clamp       the flow's beta = (sqrt(beta1) min(t, 1 - 1e-6))^2 in float32, theta uniform where
                     sqrt(beta) < 1e-10 (the official DiscreteBayesianFlow's epsilon, min_sqrt_beta); the network
                     still sees t. So L^r's theta is drawn at beta1 (1 - 1e-6)^2, not beta1
Off by default (training and the suite's evaluation: the exact computation, one Python flag check per call);
"official" turns on all three.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from suite.bfn.base import BFN, build_net, paper_hparams
from suite.bfn.continuous import check_quirks
from suite.bfn.dgauss import categorical_log_weights
from suite.bfn.schedules import DiscreteSchedule
from suite.methods import register_method

Tensor = torch.Tensor
RECEIVERS = ("paper", "factorised_1d")
INPUT_CONVENTIONS = ("suite", "official")
OFFICIAL_SENDER_SAMPLES = 10  # quirk sender_samples: DiscreteBayesianFlowLoss.discrete_time_loss(n_samples=10)
OFFICIAL_FLOW_EPS = 1e-6  # quirk flow_t_clamp: DiscreteBayesianFlow(epsilon=1e-6) clamps t to <= 1 - epsilon
OFFICIAL_MIN_SQRT_BETA = 1e-10  # quirk flow_t_clamp: and min_sqrt_beta, below which theta is uniform


def paper_receiver_kl(log_p: Tensor, x: Tensor, eps: Tensor, alpha: Tensor) -> Tensor:
    """ln p_S(y | x) - ln p_R(y) = y_x - LSE_k(y_k + ln p_O(k)), per variable (MATH.md s.5).

    y = alpha (K e_x - 1) + sqrt(alpha K) eps; written as -LSE_k(ln p_O(k) + y_k - y_x), where
    y_k - y_x = sqrt(alpha K)(eps_k - eps_x) - alpha K [k != x] is formed without the large common
    offset, so large beta1 loses no precision. log_p, eps: (..., K); x: (...); alpha broadcasts to x.
    """
    K = log_p.shape[-1]
    a = alpha[..., None]
    eps_x = eps.gather(-1, x[..., None])
    not_x = 1.0 - F.one_hot(x, K).to(log_p.dtype)
    dy = torch.sqrt(a * K) * (eps - eps_x) - a * K * not_x
    return -torch.logsumexp(log_p + dy, -1)


def factorised_receiver_kl(log_p: Tensor, x: Tensor, eps: Tensor, alpha: Tensor) -> Tensor:
    """ln p_S(y | x) - sum_j ln[p_O(j) N(y_j | alpha (K-1), alpha K) + (1 - p_O(j)) N(y_j | -alpha, alpha K)].

    Against the base density N(y_j | -alpha, alpha K) the "is class j" component has log-ratio
    u_j = y_j + alpha - alpha K / 2, so per variable: u_x - sum_j LSE(ln p_O(j) + u_j, ln(1 - p_O(j)));
    u_x is moved inside the j = x term so nothing of size alpha K cancels.
    """
    K = log_p.shape[-1]
    a = alpha[..., None]
    is_x = F.one_hot(x, K).to(log_p.dtype)
    u = a * K * (is_x - 0.5) + torch.sqrt(a * K) * eps
    u_x = u.gather(-1, x[..., None])
    # ln(1 - p_j): log1p(-p_j) is exact unless p_j is the largest; there sum the others instead
    p = log_p.exp()
    top = F.one_hot(log_p.argmax(-1), K).bool()
    others = p.masked_fill(top, 0.0).sum(-1, keepdim=True)
    log_1mp = torch.where(top, others.clamp_min(1e-45).log(), torch.log1p(-p.masked_fill(top, 0.0)))
    shift = is_x * u_x
    return -torch.logaddexp(log_p + u - shift, log_1mp - shift).sum(-1)


def official_receiver_log_weights(log_p: Tensor) -> Tensor:
    """ln of the receiver's mixture weights in the official discrete L^n (quirk `categorical_floor`): p_O in
    float32 as its distribution factory gives them (K = 2: Bernoulli.probs = (1 - p_1, p_1), the complement a
    float32 difference; K > 2: softmax), passed through Categorical(probs=) inside MixtureSameFamily: p / sum p
    clamped to [eps, 1 - eps] (float32 eps) and renormalised. log_p: (..., K) ln p_O; returns (..., K)."""
    p = log_p.float().exp()
    if p.shape[-1] == 2:
        p1 = p[..., 1:]
        p = torch.cat([1.0 - p1, p1], -1)
    return categorical_log_weights(p)


class DiscreteBFN(BFN):
    name = "bfn_discrete"
    #: the official-code quirks (continuous.QUIRKS) this method can reproduce
    allowed_quirks: tuple[str, ...] = ("categorical_floor", "flow_t_clamp", "sender_samples")

    def __init__(self, spec, net, beta1: float | None = None, receiver: str = "paper", final: str = "sample",
                 input_convention: str = "suite", quirks=()):
        """beta1: final accuracy; default the paper's value for its data: 9 for K = 2 (binarised MNIST,
        sqrt(beta1) = 3), 0.5625 otherwise (text8, sqrt(beta1) = 0.75). input_convention: the K = 2 network
        input, "suite" (2 theta_1 - 1) or "official" (2 theta_0 - 1, the official checkpoints'). quirks:
        official-code quirks to reproduce (continuous.QUIRKS; "official" = categorical_floor, flow_t_clamp,
        sender_samples); none by default."""
        self.check_spec(spec)
        super().__init__(spec, net, final)
        self.quirks = check_quirks(quirks, self.allowed_quirks, self.name)
        self._categorical_floor = "categorical_floor" in self.quirks
        self._sender_samples = OFFICIAL_SENDER_SAMPLES if "sender_samples" in self.quirks else 1
        self._flow_t_clamp = "flow_t_clamp" in self.quirks
        if receiver not in RECEIVERS:
            raise ValueError(
                f"receiver must be 'paper' (the K-dim mixture, paper Eq. 190) or 'factorised_1d' (the reference code's "
                f"product of 1-D mixtures, a looser bound), got {receiver!r}"
            )
        self.K = spec.num_classes
        self.schedule = DiscreteSchedule((9.0 if self.K == 2 else 0.5625) if beta1 is None else beta1)
        self.beta1 = self.schedule.beta1
        self.receiver = receiver
        if input_convention not in INPUT_CONVENTIONS:
            raise ValueError(
                f"input_convention must be 'suite' (K = 2 input 2 theta_1 - 1) or 'official' (2 theta_0 - 1, as the "
                f"official BFN checkpoints were trained), got {input_convention!r}")
        self.input_convention = input_convention
        self.register_buffer("_signs", torch.tensor([-1.0, 1.0]), persistent=False)

    @staticmethod
    def check_spec(spec) -> None:
        if spec.kind != "discrete":
            raise ValueError(f"bfn_discrete needs a discrete data set (K classes); {spec.name} is {spec.kind}")
        if spec.num_classes is None or spec.num_classes < 2:
            raise ValueError(f"bfn_discrete needs K >= 2 classes, got K = {spec.num_classes}")

    @classmethod
    def from_reference_config(cls, spec, net, **cfg):
        """Build from the reference code's names: max_sqrt_beta = sqrt(beta1)."""
        return cls(spec, net, **paper_hparams(dict(cfg)))

    @property
    def in_features(self) -> int:
        return 1 if self.K == 2 else self.K

    def check_batch(self, x: Tensor) -> None:
        super().check_batch(x)
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.K):
            raise ValueError(
                f"{self.name}: class indices must lie in 0..{self.K - 1}, got range [{int(x.min())}, {int(x.max())}]"
            )

    # --- theta and the network ---
    def net_input(self, z: Tensor) -> Tensor:
        """2 theta - 1 from the logits z (the reference's input scaling); for K = 2 one channel, 2 theta_1 - 1 =
        tanh((z_1 - z_0) / 2) ("suite") or 2 theta_0 - 1 = tanh((z_0 - z_1) / 2) ("official"), without a
        softmax over a length-2 axis (slow on CPU)."""
        if self.K == 2:
            d = z[..., 1:] - z[..., :1]
            return torch.tanh(0.5 * (-d if self.input_convention == "official" else d))
        return 2 * torch.softmax(z, -1) - 1

    def log_output(self, z: Tensor, t: Tensor) -> Tensor:
        """ln p_O(. | theta, t) from the logits z = ln theta + const, shaped (B, *shape, K)."""
        out = self.run_net(self.net_input(z.float()), t)
        if self.K == 2:  # one logit l: ln p_O = (ln sigmoid(-l), ln sigmoid(l))
            return F.logsigmoid(out * self._signs)
        return torch.log_softmax(out, -1)

    def flow(self, x: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """y ~ N(beta (K e_x - 1), beta K I) (MATH.md s.5); returns y, the logits of theta = softmax(y)."""
        if self._flow_t_clamp:  # quirk: the official flow's t <= 1 - 1e-6 and sqrt(beta) >= 1e-10, in float32
            sqrt_beta = t.float().clamp(max=1 - OFFICIAL_FLOW_EPS) * math.sqrt(self.beta1)
            beta = torch.where(sqrt_beta < OFFICIAL_MIN_SQRT_BETA, 0.0, sqrt_beta.square())  # beta 0: uniform theta
            beta = self.bcast(beta)[..., None]
        else:
            beta = self.bcast(self.schedule.beta(t)).float()[..., None]
        noise = torch.randn(*x.shape, self.K, device=x.device) if noise is None else noise
        return beta * (self.K * F.one_hot(x, self.K).float() - 1) + torch.sqrt(beta * self.K) * noise

    # --- losses ---
    def loss_cts(self, x: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """K beta1 t ||e_x - e-hat||^2 (paper Eq. 205), with ||e_x - p||^2 = 1 - 2 p_x + sum_k p_k^2."""
        p = self.log_output(self.flow(x, t, noise), t).exp()
        sq = 1.0 - 2.0 * p.gather(-1, x[..., None])[..., 0] + (p * p).sum(-1)
        return (self.K * self.beta1 * t).float() * self.per_example(sq)

    def loss_nstep(
        self, x: Tensor, i: Tensor, n: int, noise: Tensor | None = None, y_noise: Tensor | None = None
    ) -> Tensor:
        """n [ln p_S(y | x; alpha_i) - ln p_R(y | theta; t_{i-1}, alpha_i)] (paper Eq. 189-190), y = alpha_i
        (K e_x - 1) + sqrt(alpha_i K) y_noise: one sender draw (y_noise shaped like ln p_O, (B, *shape, K)), or
        the mean over y_noise's leading axis when it has one more (quirk sender_samples draws 10 so)."""
        t = (i.to(torch.float64) - 1) / n
        log_p = self.log_output(self.flow(x, t, noise), t)
        alpha = self.bcast(self.schedule.alpha_i(i, n)).float().expand(x.shape)
        if y_noise is None:
            S = self._sender_samples
            y_noise = torch.randn_like(log_p) if S == 1 else torch.randn(S, *log_p.shape, device=log_p.device)
        if self._categorical_floor:  # quirk: the official receiver weights (floored, renormalised)
            log_p = official_receiver_log_weights(log_p)
        kl_fn = paper_receiver_kl if self.receiver == "paper" else factorised_receiver_kl
        if y_noise.dim() == log_p.dim() + 1:  # several sender draws per theta: their mean
            S = y_noise.shape[0]
            kl = kl_fn(log_p, x.expand(S, *x.shape), y_noise, alpha.expand(S, *x.shape)).mean(0)
        else:
            kl = kl_fn(log_p, x, y_noise, alpha)
        return n * self.per_example(kl)

    def recon(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """-ln p_O(x | theta; 1), theta ~ p_F(. | x; 1) (MATH.md s.5)."""
        t = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        log_p = self.log_output(self.flow(x, t, noise), t)
        return -self.per_example(log_p.gather(-1, x[..., None])[..., 0])

    # --- sampler hooks ---
    def prior(self, num: int, device) -> Tensor:
        return torch.zeros(num, *self.spec.shape, self.K, device=device)  # uniform theta

    def output(self, z: Tensor, t: Tensor) -> Tensor:
        return self.log_output(z, t)

    def sample_output(self, log_p: Tensor, generator=None) -> Tensor:
        """k ~ p_O by Gumbel-max (O(K) per variable, reproducible under `generator`)."""
        u = torch.rand(log_p.shape, generator=generator, device=log_p.device).clamp_(min=1e-20)
        return (log_p - torch.log(-torch.log(u))).argmax(-1)

    def sender(self, k: Tensor, alpha: float, generator=None) -> Tensor:
        """y ~ N(alpha (K e_k - 1), alpha K I)."""
        noise = torch.randn(*k.shape, self.K, generator=generator, device=k.device)
        return alpha * (self.K * F.one_hot(k, self.K).float() - 1) + math.sqrt(alpha * self.K) * noise

    def update(self, z: Tensor, y: Tensor, alpha: float) -> Tensor:
        """theta' prop. to e^y theta (MATH.md s.5): add y to the logits."""
        return z + y

    def final_sample(self, log_p: Tensor, generator=None) -> Tensor:
        return self.sample_output(log_p, generator) if self.final == "sample" else log_p.argmax(-1)


@register_method("bfn_discrete")
def bfn_discrete(
    spec, backbone: str | None = None, backbone_kwargs: dict | None = None, net=None, **hparams
) -> DiscreteBFN:
    """BFN for discrete data. Hyperparameters: beta1, receiver ("paper" | "factorised_1d"), final,
    input_convention ("suite" | "official", the K = 2 network input), quirks (official-code quirks,
    continuous.QUIRKS: categorical_floor, flow_t_clamp, sender_samples; none by default); the reference config's
    `max_sqrt_beta` (= sqrt(beta1)) is accepted and converted."""
    DiscreteBFN.check_spec(spec)
    out = 1 if spec.num_classes == 2 else spec.num_classes
    net = net if net is not None else build_net(spec, backbone, backbone_kwargs, out, out)
    return DiscreteBFN(spec, net, **paper_hparams(hparams))
