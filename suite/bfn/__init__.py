"""Bayesian Flow Networks (Graves, Srivastava, Atkinson, Gomez 2023, arXiv 2308.07037).

Registers the methods `bfn_continuous`, `bfn_discretised` and `bfn_discrete` (suite/methods.py):

    model = build_method("bfn_discrete", spec, backbone="transformer", beta1=0.5625)
    model.loss(x)            # L^inf per example, nats
    model.nll(x, n_steps=10) # L^10 + L^r >= -ln p(x)
    model.sample(16, n_steps=100, generator=torch.Generator().manual_seed(0))

Modules: schedules (accuracy schedules), dgauss (the discretised Gaussian's definitions), continuous /
discretised / discrete (one per data type; discretised holds the reference O(K) sums of its losses), sampler
(the shared n-step loop), fast (optional accelerations of the discretised sums, behind one dispatch).
"""

from suite.bfn.continuous import ContinuousBFN, bfn_continuous
from suite.bfn.discrete import DiscreteBFN, bfn_discrete
from suite.bfn.discretised import DiscretisedBFN, bfn_discretised
from suite.bfn.schedules import ContinuousSchedule, DiscreteSchedule, from_reference_config

__all__ = [
    "ContinuousBFN",
    "DiscretisedBFN",
    "DiscreteBFN",
    "ContinuousSchedule",
    "DiscreteSchedule",
    "from_reference_config",
    "bfn_continuous",
    "bfn_discretised",
    "bfn_discrete",
]
