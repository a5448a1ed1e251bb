"""Diffusion baselines (Sohl-Dickstein et al. 2015 and modern likelihood baselines), on suite's contract."""
from . import discrete  # noqa: F401,E402  multinomial_diffusion, masked_diffusion
from baselines import sohl2015  # noqa: F401  (registers sohl_gaussian, sohl_binomial)
from baselines import ddpm, vdm  # noqa: F401  (registers ddpm, vdm)
