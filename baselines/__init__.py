"""Diffusion baselines (Sohl-Dickstein et al. 2015 and modern likelihood baselines), on suite's contract."""
