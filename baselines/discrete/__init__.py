"""Discrete diffusion baselines for text and binary data: multinomial diffusion (Hoogeboom et al. 2021) and
absorbing-state masked diffusion with a continuous-time bound (MD4 / MDLM). Importing registers
`multinomial_diffusion` and `masked_diffusion`."""

from .masked import MaskedDiffusion, build_masked_diffusion
from .multinomial import MultinomialDiffusion, build_multinomial_diffusion, multinomial_betas

__all__ = [
    "MaskedDiffusion",
    "MultinomialDiffusion",
    "build_masked_diffusion",
    "build_multinomial_diffusion",
    "multinomial_betas",
]
