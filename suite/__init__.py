"""bfnbench: Bayesian Flow Networks beside diffusion baselines, on shared data and evaluators."""

__version__ = "0.1.0"
