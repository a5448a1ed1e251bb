"""DDPM / improved-DDPM (Ho et al. 2020; Nichol & Dhariwal 2021): the full variational bound on discretised images.

Registers the method `ddpm`. Schedules from diffusers' DDPMScheduler definitions, recomputed in float64;
the bound (prior KL, Gaussian KLs, discretised Gaussian decoder) is implemented here (MATH.md s.8).
"""

from .bound import discretised_gaussian_log_prob, gaussian_kl_to_standard, normal_kl
from .method import DDPM, build_ddpm
from .schedules import Tables, make_betas, spaced_steps

__all__ = ["DDPM", "Tables", "build_ddpm", "discretised_gaussian_log_prob", "gaussian_kl_to_standard",
           "make_betas", "normal_kl", "spaced_steps"]
