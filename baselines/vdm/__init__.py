"""Variational Diffusion Models (Kingma et al. 2021): continuous-time and n-step bounds on discretised data.

Registers the method `vdm` (MATH.md s.9), the like-for-like baseline for BFN's continuous-time CIFAR-10 result.
"""

from .method import VDM, build_vdm, recon_nll
from .schedule import LinearGamma, alpha_sigma2

__all__ = ["VDM", "LinearGamma", "alpha_sigma2", "build_vdm", "recon_nll"]
