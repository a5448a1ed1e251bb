"""Diffusion baselines (Sohl-Dickstein et al. 2015 and modern likelihood baselines), on suite's contract."""
from baselines import (  # noqa: F401  (registers ddpm, vdm)
    ddpm,
    sohl2015,  # noqa: F401  (registers sohl_gaussian, sohl_binomial)
    vdm,
)

from . import discrete  # noqa: F401,E402  multinomial_diffusion, masked_diffusion
