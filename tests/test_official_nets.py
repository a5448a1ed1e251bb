"""The official BFN networks (suite/nets/official): the released checkpoints' layouts key for key, the small
checkpoints in the official format reproducing the official network's recorded outputs, data-only loading
with errors naming the file, and the K = 2 input convention at the method level.

Reference files: shared/reference/official_nets (made from the official code, b62568e; its README). Found
at $BFNBENCH_OFFICIAL_REF or ../shared/reference/official_nets; the tests that need them skip, naming the
path, where neither exists.

Tolerance: |ours - official net_output| <= 1e-5 absolute for every config. Measured on this CPU (float32,
one thread): max abs error 2.8e-6 (mnist), 2.1e-6 (cifar discretised 256), 1.7e-6 (discretised 16), 1.6e-6
(continuous 16), 1.3e-6 (continuous 256), 5.4e-7 (text8), on outputs of magnitude up to 1.9.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from suite.bfn.discrete import DiscreteBFN
from suite.data.base import DataSpec
from suite.methods import build_method
from suite.nets import build_backbone, count_parameters
from suite.nets.official import (
    OfficialCheckpointError,
    OfficialNet,
    build_official_module,
    config_names,
    load_official,
    official_config,
    read_state_dict,
)
from tests.helpers.official import REF

TOL = 1e-5
need_ref = pytest.mark.skipif(not (REF / "layouts.json").is_file(), reason=f"official reference files not at {REF}")
CONFIGS = ["mnist_discrete", "cifar10_discretized_256bins", "cifar10_discretized_16bins",
           "cifar10_continuous_256bins", "cifar10_continuous_16bins", "text8_discrete"]  # fmt: skip


def layouts() -> dict:
    return json.loads((REF / "layouts.json").read_text())


def small_net(name: str) -> OfficialNet:
    cfg = layouts()[name]["small"]["config"]
    ia = cfg["input_adapter"]["parameters"]
    if cfg["net"]["class_name"] == "GPT":
        shape, fin, fout = (ia["seq_len"],), ia["vocab_size"], ia["vocab_size"]
    else:
        shape, fin = (ia["input_channels"], *ia["input_shape"]), 1
        fout = cfg["output_adapter"]["parameters"]["output_height"]
    return OfficialNet(shape, fin, fout, config=cfg).eval()


def record(name: str) -> dict[str, torch.Tensor]:
    d = np.load(REF / "small" / f"{name}.npz")
    return {k: torch.from_numpy(d[k]) for k in d.files}


def to_suite(rec: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h, t, expected out) in the suite's layout from the official (B, H, W, C) / (B, HW, C, F) ones."""
    x, t, out = rec["net_input"], rec["t"], rec["net_output"]
    B = x.shape[0]
    t = t.reshape(B, -1)[:, 0]
    if x.dim() == 3:  # text: (B, L, K) theta -> the suite's input 2 theta - 1
        return 2 * x - 1, t, out
    _, H, W, C = x.shape
    return x.permute(0, 3, 1, 2)[..., None], t, out.reshape(B, H, W, C, -1).permute(0, 3, 1, 2, 4)


def test_configs_cover_the_released_checkpoints():
    from suite.nets.official import RELEASED

    assert set(RELEASED.values()) <= set(config_names()) and set(config_names()) == set(CONFIGS)


@need_ref
@pytest.mark.parametrize("name", CONFIGS)
def test_full_size_layout_key_for_key(name):
    """Every state_dict key, in order, with its shape; the parameter count; the config itself (meta device)."""
    ref = layouts()[name]
    with torch.device("meta"):
        net = build_official_module(official_config(name))
    ours = {f"net.{k}": list(v.shape) for k, v in net.state_dict().items()}
    assert list(ours) == list(ref["state_dict"]) and ours == ref["state_dict"]
    assert count_parameters(net) == ref["params"]
    cfg = official_config(name)
    cfg.pop("suite")
    assert cfg == {k: v for k, v in ref["config"].items() if k != "loss"}


def test_presets_build_the_full_networks_on_meta():
    with torch.device("meta"):
        net = build_backbone("official_text8_discrete", (256,), 27, 27)
    assert count_parameters(net) == 170_175_003


@need_ref
@pytest.mark.parametrize("name", CONFIGS)
def test_small_checkpoint_reproduces_the_official_output(name):
    """strict load, then net(net_input, t) = net_output within TOL, on the suite's layout and the official one."""
    net = small_net(name)
    prov = load_official(net, REF / "small" / f"{name}.pt")
    assert prov["checkpoint"].endswith(f"{name}.pt")
    rec = record(name)
    h, t, want = to_suite(rec)
    with torch.no_grad():
        got = net(h, t)
        raw = net.official_forward(rec["net_input"], rec["t"])
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= TOL
    assert (raw - rec["net_output"]).abs().max().item() <= TOL
    # and the comparison can fail: one perturbed weight moves the output far beyond TOL
    with torch.no_grad():
        p = next(p for n, p in net.named_parameters() if "output_projection.bias" in n or "lm_head.bias" in n)
        p.add_(1e-3)
        assert (net(h, t) - want).abs().max().item() > 100 * TOL


@need_ref
def test_mnist_sign_matters():
    """The recorded MNIST input is theta_0 = P(class 0) (the flow's parameter); the flipped input 1 - theta_0
    gives a different output: the K = 2 convention is not a symmetry of the trained network."""
    net = small_net("mnist_discrete")
    load_official(net, REF / "small/mnist_discrete.pt")
    h, t, want = to_suite(record("mnist_discrete"))
    with torch.no_grad():
        assert (net(1 - h, t) - want).abs().max() > 0.1


@need_ref
@pytest.mark.parametrize("name", ["mnist_discrete", "text8_discrete"])
def test_discrete_method_feeds_the_official_input(name):
    """Through the Method: bfn_discrete with the config's hyperparameters (input_convention="official" for K = 2)
    turns logits z into the network input the official BFN gives (2 theta_0 - 1; text: 2 theta - 1) and reads
    the output as the official distribution factory does (K = 2: a class-1 logit; K = 27: softmax logits)."""
    net = small_net(name)
    load_official(net, REF / "small" / f"{name}.pt")
    rec = record(name)
    cfg = official_config(name)["suite"]
    K = 2 if name.startswith("mnist") else 27
    shape = (1, 28, 28) if K == 2 else (256,)
    spec = DataSpec(name, "discrete", shape, num_classes=K)
    method = build_method(cfg["method"], spec, net=net, **cfg["hparams"]).eval()
    assert isinstance(method, DiscreteBFN) and method.input_convention == ("official" if K == 2 else "suite")
    h, t, want = to_suite(rec)
    if K == 2:  # choose theta_0 so that 2 theta_0 - 1 equals the recorded network input
        p0 = ((h[..., 0] + 1) / 2).double()
        z = torch.stack([p0.log(), (1 - p0).log()], -1).float()
        want_logp = torch.nn.functional.logsigmoid(torch.cat([-want, want], -1))
    else:
        z = rec["net_input"].double().clamp_min(1e-30).log().float()
        want_logp = torch.log_softmax(want, -1)
    with torch.no_grad():
        got = method.log_output(z, t.double())
    assert (got - want_logp).abs().max().item() <= 10 * TOL  # through log(theta) and tanh: a few ulps more
    if K == 2:  # the suite's own convention feeds 2 theta_1 - 1: not what the checkpoint expects
        method.input_convention = "suite"
        with torch.no_grad():
            assert (method.log_output(z, t.double()) - want_logp).abs().max() > 0.1


def test_input_convention_is_checked_and_only_flips_k2():
    spec = DataSpec("bin", "discrete", (4,), num_classes=2)
    with pytest.raises(ValueError, match="input_convention"):
        build_method("bfn_discrete", spec, backbone="mlp", input_convention="P0")
    z = torch.randn(3, 4, 2)
    a = build_method("bfn_discrete", spec, backbone="mlp").net_input(z)
    b = build_method("bfn_discrete", spec, backbone="mlp", input_convention="official").net_input(z)
    p = torch.softmax(z, -1)
    torch.testing.assert_close(a[..., 0], 2 * p[..., 1] - 1, atol=1e-6, rtol=0)
    torch.testing.assert_close(b[..., 0], 2 * p[..., 0] - 1, atol=1e-6, rtol=0)
    spec27 = DataSpec("txt", "discrete", (4,), num_classes=27)
    z = torch.randn(3, 4, 27)
    torch.testing.assert_close(build_method("bfn_discrete", spec27, backbone="mlp", input_convention="official").net_input(z),
                               2 * torch.softmax(z, -1) - 1)  # fmt: skip


@need_ref
@pytest.mark.parametrize("name", ["cifar10_discretized_256bins", "cifar10_continuous_16bins"])
def test_gaussian_methods_run_the_official_net(name):
    """bfn_discretised / bfn_continuous call the network on mu[..., None] and t: the official output comes back."""
    net = small_net(name)
    load_official(net, REF / "small" / f"{name}.pt")
    cfg = official_config(name)["suite"]
    K = int(cfg["dataset"].split("_")[1])
    spec = DataSpec(cfg["dataset"], "discretised", (3, 32, 32), num_classes=K)
    method = build_method(cfg["method"], spec, net=net, **cfg["hparams"]).eval()
    h, t, want = to_suite(record(name))
    with torch.no_grad():
        assert (method.run_net(h[..., 0][..., None], t) - want).abs().max().item() <= TOL
    if cfg["method"] == "bfn_continuous":  # 16 bins: the official 0.7 sigma1 reconstruction (min_variance == 1e-3)
        assert method.sigma_r == pytest.approx(0.7 * 1e-3**0.5)
    assert method.sigma1 == pytest.approx(official_config(name)["bayesian_flow"]["parameters"]["min_variance"] ** 0.5)


# --- loading: data only, clear errors -------------------------------------------------------------------------
class _Boom:
    def __reduce__(self):
        return (os.system, ("touch BOOM",))


def test_code_in_a_pickle_is_refused_unrun(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "mnist_ema.pt"
    torch.save({"net.x": torch.zeros(1), "evil": _Boom()}, bad)
    with pytest.raises(OfficialCheckpointError, match="mnist_ema.pt.*refused"):
        read_state_dict(bad)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(OfficialCheckpointError, match="raw.pt"):
        read_state_dict(raw)
    assert not (tmp_path / "BOOM").exists()


@need_ref
def test_truncated_and_missing_files_name_the_file(tmp_path):
    whole = (REF / "small/text8_discrete.pt").read_bytes()
    cut = tmp_path / "text8_ema.pt"
    cut.write_bytes(whole[: len(whole) // 2])
    net = small_net("text8_discrete")
    with pytest.raises(OfficialCheckpointError, match=r"text8_ema\.pt.*truncated"):
        load_official(net, cut)
    with pytest.raises(OfficialCheckpointError, match="nowhere.pt: no such file"):
        load_official(net, tmp_path / "nowhere.pt")
    (tmp_path / "list.pt").write_bytes(b"")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(OfficialCheckpointError, match="list.pt: holds list"):
        read_state_dict(tmp_path / "list.pt")


@need_ref
def test_a_file_of_another_config_is_named_as_such(tmp_path):
    """A continuous-data file into the discretised network: the shape mismatch is named; text8 into MNIST: keys."""
    net = small_net("cifar10_discretized_256bins")
    with pytest.raises(OfficialCheckpointError, match=r"cifar10_continuous_256bins\.pt.*output_projection.weight \(3, 35\) "
                                                      r"\(expected \(6, 35\)\)"):  # fmt: skip
        load_official(net, REF / "small/cifar10_continuous_256bins.pt")
    with pytest.raises(OfficialCheckpointError, match=r"text8_discrete\.pt: not a checkpoint.*missing key"):
        load_official(small_net("mnist_discrete"), REF / "small/text8_discrete.pt")


def test_full_size_file_of_another_config_is_identified(tmp_path):
    """A full-size state dict (the released layout, zeros) is recognised by its shapes and named in the error."""
    with torch.device("meta"):
        ref = build_official_module(official_config("cifar10_continuous_256bins"))
    sd = {f"net.{k}": torch.zeros(v.shape) for k, v in ref.state_dict().items()}
    path = tmp_path / "cifar10_256c_ema.pt"
    torch.save(sd, path)
    with torch.device("meta"):
        net = OfficialNet((3, 32, 32), 1, 2, config="cifar10_discretized_256bins")
    with pytest.raises(OfficialCheckpointError, match="cifar10_256c_ema.pt.*has the layout of the official "
                       "'cifar10_continuous_16bins' / 'cifar10_continuous_256bins'"):
        load_official(net, path)


def test_wrapper_checks_its_input():
    net = OfficialNet((256,), 27, 27, config=dict(official_config("text8_discrete"), net=dict(
        class_name="GPT", parameters=dict(vocab_size=27, n_layer=1, n_head=2, n_embd=16, skip=True)),
        input_adapter=dict(class_name="TextInputAdapter", parameters=dict(vocab_size=27, seq_len=256, output_size=16))))
    with pytest.raises(ValueError, match=r"expected h shaped \(B, 256, 27\), got \(2, 256, 26\)"):
        net(torch.zeros(2, 256, 26), torch.zeros(2))
    with pytest.raises(ValueError, match="data_shape"):
        OfficialNet((128,), 27, 27, config="text8_discrete")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@need_ref
@pytest.mark.parametrize("name", CONFIGS)
def test_cuda_bf16_autocast_close_to_float32(name):
    """On a GPU the reproduction runs the network under bf16 autocast: its output stays near the float32 one
    (bf16 has 8 bits of mantissa: a loose bound, 0.05 + 5 % of the output scale)."""
    net = small_net(name).cuda()
    load_official(net, REF / "small" / f"{name}.pt")
    h, t, want = (v.cuda() for v in to_suite(record(name)))
    with torch.no_grad():
        assert (net(h, t) - want).abs().max().item() <= 1e-4  # TF32 off by default for matmul in float32
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = net(h, t).float()
    assert (got - want).abs().max().item() <= 0.05 + 0.05 * want.abs().max().item()
