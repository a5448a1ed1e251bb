"""The one n-step sampler for all three data types (MATH.md s.3-5, pitfall 8).

    theta = prior
    for i = 1..n:
        out   = p_O(. | theta, t = (i-1)/n)     one network call
        k     ~ out                             (continuous data: k = x-hat)
        y     ~ p_S(. | k; alpha_i)
        theta = h(theta, y, alpha_i)            Bayesian update
    return a draw from p_O(. | theta, t = 1) ("sample", the paper) or its mode ("mode", the reference)

Every random draw comes from `generator`, so a seed fixes the samples.
"""

from __future__ import annotations

import torch

from suite.bfn.schedules import check_n_steps


@torch.no_grad()
def sample(model, num: int, n_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`num` samples shaped (num, *spec.shape) in the data's value space, after `n_steps` updates."""
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be an integer >= 1, got {num!r}")
    n = check_n_steps(n_steps)
    device = model.device
    if generator is not None and generator.device.type != torch.device(device).type:
        raise ValueError(
            f"generator is on {generator.device} but the model is on {device}: "
            f"make it with torch.Generator(device={str(device)!r})"
        )
    alphas = model.schedule.alphas(n).tolist()
    state = model.prior(num, device)
    for i in range(1, n + 1):
        t = torch.full((num,), (i - 1) / n, dtype=torch.float64, device=device)
        k = model.sample_output(model.output(state, t), generator)
        y = model.sender(k, alphas[i - 1], generator)
        state = model.update(state, y, alphas[i - 1])
    out = model.output(state, torch.ones(num, dtype=torch.float64, device=device))
    return model.final_sample(out, generator)
