"""The official BFN networks (nnaisense/bayesian-flow-networks), rewritten so the released checkpoints load
with strict=True and no key mapping. See docs/official.md.

    from suite.nets.official import OfficialNet, load_official
    net = OfficialNet((1, 28, 28), 1, 1, config="mnist_discrete")
    load_official(net, "mnist_ema.pt")
"""

from suite.nets.official.backbone import OfficialNet, build_official_module
from suite.nets.official.configs import RELEASED, config_names, official_config
from suite.nets.official.load import OfficialCheckpointError, load_official, read_state_dict

__all__ = ["OfficialNet", "build_official_module", "RELEASED", "config_names", "official_config",
           "OfficialCheckpointError", "load_official", "read_state_dict"]
