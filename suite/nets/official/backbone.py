"""The official BFN networks behind the suite's backbone signature.

    net = OfficialNet(data_shape, in_features, out_features, config="mnist_discrete")
    out = net(h, t)    # h (B, *data_shape, in_features), t (B,) -> (B, *data_shape, out_features)
    net.net            # the official module (adapters + network): its state_dict() keys are the official
                       # checkpoints' keys ("net.input_adapter.pos_feats", ...), so they load with no mapping

Layouts: images are (C, H, W) in the suite and (B, H, W, C) in the official code, which also wants t shaped
like the data; the wrapper permutes and broadcasts both ways. Inputs are what the suite's BFN methods give:
mu (continuous, discretised), 2 theta - 1 (discrete; for K = 2 the method's `input_convention="official"`
gives 2 theta_0 - 1, which the MNIST network was trained on). The text network's own adapter computes
2 theta - 1 from theta; given h = 2 theta - 1 the wrapper applies the same linear map to it directly.
"""

from __future__ import annotations

import torch
from torch import nn

from suite.nets.embed import check_input, check_size
from suite.nets.official.adapters import FourierImageInputAdapter, OutputAdapter, TextInputAdapter
from suite.nets.official.configs import official_config
from suite.nets.official.gpt import GPT
from suite.nets.official.unet_improved import UNetModel
from suite.nets.official.unet_vdm import UNetVDM

Tensor = torch.Tensor
_ADAPTERS = {"FourierImageInputAdapter": FourierImageInputAdapter, "TextInputAdapter": TextInputAdapter,
             "OutputAdapter": OutputAdapter}  # fmt: skip
_NETS = {"UNetModel": UNetModel, "UNetVDM": UNetVDM, "GPT": GPT}


def _part(cfg: dict | None, table: dict, what: str):
    if cfg is None:
        return None
    cls = table.get(cfg.get("class_name"))
    if cls is None:
        raise ValueError(f"official config: unsupported {what} {cfg.get('class_name')!r}; supported: {', '.join(table)}")
    return cls, dict(cfg.get("parameters") or {})


def build_official_module(config: dict) -> nn.Module:
    """The official network (input adapter + network + output adapter) from a config in the official format."""
    net_cls, net_kw = _part(config["net"], _NETS, "network")
    in_cls, in_kw = _part(config["input_adapter"], _ADAPTERS, "input adapter")
    out = _part(config.get("output_adapter"), _ADAPTERS, "output adapter")
    if net_cls is UNetModel:
        if net_kw.pop("dims", 2) != 2:
            raise ValueError("official config: only the 2-D UNetModel (dims = 2) is supported")
        net_kw["attention_resolutions"] = tuple(net_kw.get("attention_resolutions", (8, 16)))
        net_kw["channel_mult"] = tuple(net_kw.get("channel_mult", (1, 2, 2, 2)))
    if net_cls is GPT:
        if out is not None:
            raise ValueError("official config: the GPT's output adapter is not supported (the released config has none)")
        return GPT(in_cls(**in_kw), **net_kw)
    return net_cls(in_cls(**in_kw), out[0](**out[1]), **net_kw)


class OfficialNet(nn.Module):
    """Backbone wrapping an official BFN network; `config` is an official config name or dict (configs.py)."""

    def __init__(self, data_shape, in_features: int, out_features: int, config: str | dict = "mnist_discrete"):
        super().__init__()
        cfg = official_config(config) if isinstance(config, str) else config
        self.config_name = config if isinstance(config, str) else "custom"
        self.data_shape = check_size("OfficialNet", data_shape, in_features, out_features, (1, 3),
                                     "(L,) for the GPT, (C, H, W) for the UNets")  # fmt: skip
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.net = build_official_module(cfg)
        self.is_text = isinstance(self.net, GPT)
        self.autocast_dtype: torch.dtype | None = None  # e.g. torch.bfloat16: the network (only) under autocast
        want = self._expected(cfg)
        got = (self.data_shape, self.in_features, self.out_features)
        if got != want:
            raise ValueError(
                f"OfficialNet({self.config_name}): this network takes data_shape {want[0]}, in_features {want[1]}, "
                f"out_features {want[2]}; got {got[0]}, {got[1]}, {got[2]}")

    @staticmethod
    def _expected(cfg: dict) -> tuple[tuple[int, ...], int, int]:
        ia = cfg["input_adapter"]["parameters"]
        if cfg["net"]["class_name"] == "GPT":
            K = cfg["net"]["parameters"]["vocab_size"]
            return (int(ia["seq_len"]),), int(ia["vocab_size"]), int(K)
        H, W = ia["input_shape"]
        return (int(ia["input_channels"]), int(H), int(W)), 1, int(cfg["output_adapter"]["parameters"]["output_height"])

    def forward(self, h: Tensor, t: Tensor) -> Tensor:
        check_input(self, h, t)
        if self.autocast_dtype is not None:
            with torch.autocast(h.device.type, dtype=self.autocast_dtype):
                return self._forward(h, t).float()
        return self._forward(h, t)

    def _forward(self, h: Tensor, t: Tensor) -> Tensor:
        if self.is_text:  # h = 2 theta - 1 (B, L, K); the official adapter's t is (B, L)
            return self.net.forward_embedded(self.net.input_adapter.embed(h, t[:, None].expand(h.shape[:2])))
        x = h[..., 0].permute(0, 2, 3, 1)  # (B, C, H, W, 1) -> the official (B, H, W, C)
        out = self.net(x, t.reshape(-1, 1, 1, 1).expand(x.shape))  # (B, H*W, C, out_features)
        B, (C, H, W) = h.shape[0], self.data_shape
        return out.reshape(B, H, W, C, -1).permute(0, 3, 1, 2, 4)

    def official_forward(self, data: Tensor, t: Tensor) -> Tensor:
        """The official call, on the official layouts: net(data, t) as make_bfn's network takes it."""
        return self.net(data, t)
