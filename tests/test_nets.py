"""The shared backbones (suite/nets): the signature net(h, t) of suite/nets/README.md, conditioning on
t and h, per-example independence, gradients, autocast, non-causality, memory linear in K, bad input,
and the paper presets' parameter counts (BFN paper, MATH.md s.6)."""

from __future__ import annotations

import math

import pytest
import torch

from suite.nets import backbone_names, build_backbone, count_parameters, preset, preset_names
from suite.nets.conv import from_channels, to_channels
from suite.nets.embed import sinusoidal_embedding
from suite.nets.transformer import sinusoidal_positions

TINY_UNET = dict(block_out_channels=(8, 16), layers_per_block=1, attn_levels=(False, True), attention_head_dim=8,
                 norm_num_groups=4)  # fmt: skip
UNET3 = dict(block_out_channels=(8, 8, 16), layers_per_block=1, attention_head_dim=8, norm_num_groups=4,
             fourier_exponents=(6,))  # fmt: skip
TINY_TF = dict(d_model=16, n_layers=2, n_heads=2)

# (backbone, data_shape, in_features, out_features, size kwargs)
CASES = [
    ("mlp", (2,), 1, 1, dict(width=32, depth=2)),
    ("mlp", (20,), 2, 3, dict(width=32, depth=3, time_mode="concat")),
    ("mlp", (1, 4, 4), 1, 2, dict(width=16)),
    ("conv", (1, 8, 8), 1, 2, dict(channels=8, n_blocks=1, norm_groups=4)),
    ("conv", (3, 6, 5), 2, 1, dict(channels=8, n_blocks=2, norm_groups=2)),
    ("conv", (7, 9), 1, 1, dict(channels=8, n_blocks=1, norm_groups=4)),
    ("unet", (1, 8, 8), 1, 2, TINY_UNET),
    ("unet", (3, 7, 5), 2, 1, {**TINY_UNET, "project_input": True, "skip": True}),  # odd sizes: padded, cropped
    ("unet", (1, 9, 10), 1, 1, UNET3),  # three levels: 9 x 10 padded to 12 x 12
    ("transformer", (16,), 27, 27, TINY_TF),
    ("transformer", (5,), 3, 1, {**TINY_TF, "skip": True, "time_embed": "fourier", "positions": False}),
]
IDS = [f"{c[0]}-{'x'.join(map(str, c[1]))}-{c[2]}to{c[3]}" for c in CASES]


def make(case):
    name, shape, fi, fo, kw = case
    torch.manual_seed(0)
    return build_backbone(name, shape, fi, fo, **kw).eval(), shape, fi, fo


def inputs(shape, fi, B=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, *shape, fi, generator=g), torch.rand(B, generator=g)


def rel_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_signature_shapes(case):
    """README signature: (B, *data_shape, F_in), t (B,) -> (B, *data_shape, F_out), finite, float32."""
    net, shape, fi, fo = make(case)
    for B in (1, 3):
        h, t = inputs(shape, fi, B)
        out = net(h, t)
        assert out.shape == (B, *shape, fo) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
    # edge times t = 0 and t = 1 stay finite
    h, t = inputs(shape, fi, 2)
    assert torch.isfinite(net(h, torch.tensor([0.0, 1.0]))).all()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_output_depends_on_t_and_h(case):
    """The network is a function of both inputs: a different t, or a change of h at one
    dimension, changes the output (by far more than float32 rounding, ~1e-7 relative)."""
    net, shape, fi, fo = make(case)
    h, t = inputs(shape, fi)
    with torch.no_grad():
        out = net(h, t)
        assert rel_change(net(h, 1 - t), out) > 1e-4
        h2 = h.clone()
        h2.view(h.shape[0], -1)[:, 0] += 1.0  # first dimension, first feature
        assert rel_change(net(h2, t), out) > 1e-4


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_examples_are_independent(case):
    """out[b] depends on (h[b], t[b]) only: no batch statistics (GroupNorm/LayerNorm, not BatchNorm),
    no attention across examples. Changing example 1 leaves example 0 unchanged to float32 rounding."""
    net, shape, fi, fo = make(case)
    h, t = inputs(shape, fi)
    h2, t2 = h.clone(), t.clone()
    h2[1] = torch.randn_like(h2[1])
    t2[1] = 1 - t2[1]
    with torch.no_grad():
        a, b = net(h, t), net(h2, t2)
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    assert rel_change(b[1], a[1]) > 1e-4


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradients_reach_every_parameter(case):
    """Every parameter receives a nonzero gradient from a generic scalar of the output."""
    net, shape, fi, fo = make(case)
    net.train()
    h, t = inputs(shape, fi)
    w = torch.randn(h.shape[0], *shape, fo, generator=torch.Generator().manual_seed(2))
    (net(h, t) * w).sum().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not dead, f"no gradient reaches {dead}"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bfloat16_autocast(case):
    """Under CPU bfloat16 autocast the forward runs, is finite and agrees with float32 to a relative
    L2 error of 0.05: bfloat16's unit roundoff is 2^-8 = 0.004, and a few layers compound it to ~1 %."""
    net, shape, fi, fo = make(case)
    h, t = inputs(shape, fi)
    with torch.no_grad():
        ref = net(h, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(h, t)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert rel_change(out.float(), ref) < 0.05


def test_transformer_is_non_causal():
    """Bidirectional attention (no causal mask): changing the LAST token changes the FIRST output."""
    net, shape, fi, fo = make(CASES[-2])
    h, t = inputs(shape, fi)
    h2 = h.clone()
    h2[:, -1] = torch.randn_like(h2[:, -1])
    with torch.no_grad():
        a, b = net(h, t), net(h2, t)
    assert rel_change(b[:, 0], a[:, 0]) > 1e-4


def test_transformer_permutation_equivariant_without_positions():
    """Self-attention + per-token maps are permutation-equivariant: with positions off,
    net(h[:, perm]) = net(h)[:, perm]; with the sinusoidal positions on, the order matters."""
    torch.manual_seed(0)
    L = 9
    perm = torch.randperm(L)
    h, t = inputs((L,), 4)
    for positions in (False, True):
        net = build_backbone("transformer", (L,), 4, 3, positions=positions, **TINY_TF).eval()
        with torch.no_grad():
            permuted, ref = net(h[:, perm], t), net(h, t)[:, perm]
        if positions:
            assert rel_change(permuted, ref) > 1e-3
        else:
            torch.testing.assert_close(permuted, ref, rtol=1e-5, atol=1e-6)


def _saved_numels(net, h, t) -> list[int]:
    """Numels of every tensor autograd saves for backward during net(h, t), then run backward."""
    sizes: list[int] = []

    def pack(x):
        sizes.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = net(h, t)
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    return sizes


def test_transformer_large_K_memory_linear():
    """K = 50,000 classes, L = 16, B = 2, tiny width: nothing scales as K^2. (i) no parameter has more
    than (K + 1) d elements (the two K x d maps); (ii) no tensor saved for backward is larger than the
    (B, L, K) input; (iii) total saved memory grows at most linearly: saved(50,000) / saved(5,000) <= 10
    (an a K + b law gives < 10; a K^2 term would give ~100)."""
    B, L, d = 2, 16, 16
    totals = {}
    for K in (5_000, 50_000):
        torch.manual_seed(0)
        net = build_backbone("transformer", (L,), K, K, d_model=d, n_layers=1, n_heads=2)
        assert max(p.numel() for p in net.parameters()) <= (K + 1) * d
        h = torch.softmax(torch.randn(B, L, K), -1) * 2 - 1  # BFN's 2 theta - 1 features
        sizes = _saved_numels(net, h, torch.rand(B))
        assert max(sizes) <= B * L * K
        totals[K] = sum(sizes)
    assert totals[50_000] / totals[5_000] <= 10.0


def test_bad_input_names_expected_and_got():
    """Wrong data shape, wrong feature count, wrong t, integer h: a ValueError naming expected vs got."""
    net = build_backbone("transformer", (16,), 27, 27, **TINY_TF)
    t = torch.rand(2)
    with pytest.raises(ValueError, match=r"expected h shaped \(B, 16, 27\), got \(2, 16, 26\).*expected 27, got 26"):
        net(torch.randn(2, 16, 26), t)
    with pytest.raises(ValueError, match=r"expected h shaped \(B, 16, 27\), got \(2, 15, 27\)"):
        net(torch.randn(2, 15, 27), t)
    with pytest.raises(ValueError, match=r"expected h shaped \(B, 16, 27\), got \(2, 16\)"):
        net(torch.randn(2, 16), t)
    with pytest.raises(ValueError, match=r"expected t shaped \(2,\).*got \(2, 1\)"):
        net(torch.randn(2, 16, 27), t[:, None])
    with pytest.raises(ValueError, match="float tensor of features.*one-hot"):
        net(torch.zeros(2, 16, 27, dtype=torch.long), t)
    conv = build_backbone("conv", (1, 8, 8), 2, 1, channels=8, norm_groups=4)
    with pytest.raises(ValueError, match=r"expected h shaped \(B, 1, 8, 8, 2\), got \(2, 1, 8, 8, 1\)"):
        conv(torch.randn(2, 1, 8, 8, 1), t)


def test_bad_construction():
    """Impossible sizes and unknown names fail at construction with the fix in the message."""
    with pytest.raises(ValueError, match="unknown backbone 'resnet'.*mlp"):
        build_backbone("resnet", (4,), 1, 1)
    with pytest.raises(ValueError, match="no option.*widht.*its options: width"):
        build_backbone("mlp", (4,), 1, 1, widht=3)
    with pytest.raises(ValueError, match=r"needs data_shape \(C, H, W\) or \(H, W\), got \(16,\)"):
        build_backbone("conv", (16,), 1, 1)
    with pytest.raises(ValueError, match=r"needs data_shape \(L,\)"):
        build_backbone("transformer", (4, 4), 1, 1)
    with pytest.raises(ValueError, match="multiple of n_heads"):
        build_backbone("transformer", (4,), 1, 1, d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="divisible by norm_num_groups"):
        build_backbone("unet", (1, 8, 8), 1, 1, block_out_channels=(12, 24), norm_num_groups=8)
    with pytest.raises(ValueError, match="one flag per level"):
        build_backbone("unet", (1, 8, 8), 1, 1, block_out_channels=(8, 16), attn_levels=(True,), norm_num_groups=4)
    with pytest.raises(ValueError, match="positive"):
        build_backbone("mlp", (0, 3), 1, 1)


def test_registry_and_presets():
    """build_backbone knows every backbone and preset; preset sizes can be overridden."""
    assert backbone_names() == ["conv", "mlp", "official", "transformer", "unet"]
    assert {"unet_mnist_paper", "unet_tiny", "transformer_text8_paper", "transformer_tiny"} <= set(preset_names())
    net = build_backbone("transformer_tiny", (8,), 3, 2, n_layers=1)
    assert len(net.blocks) == 1 and net.blocks[0].ln_1.normalized_shape == (preset("transformer_tiny")[1]["d_model"],)
    h, t = inputs((8,), 3)
    assert net(h, t).shape == (3, 8, 2)
    unet = build_backbone("unet_tiny", (1, 8, 8), 1, 1)
    assert unet(*inputs((1, 8, 8), 1)).shape == (3, 1, 8, 8, 1)
    # every backbone's defaults build and run
    for name, shape in [("mlp", (6,)), ("conv", (1, 8, 8)), ("unet", (1, 8, 8)), ("transformer", (6,))]:
        with torch.no_grad():
            assert build_backbone(name, shape, 2, 3)(*inputs(shape, 2)).shape == (3, *shape, 3)


@pytest.mark.parametrize(
    "name, shape, features, paper",
    [
        ("unet_mnist_paper", (1, 28, 28), 1, 24.8e6),  # BFN paper s.6: improved-DDPM UNet, 24.8M
        ("unet_cifar_vdm", (3, 32, 32), 1, 30.7e6),  # VDM UNet, 30.7M (approximated)
        ("transformer_text8_paper", (256,), 27, 170.2e6),  # non-causal GPT 24 x 768, 170.2M
    ],
)
def test_paper_preset_parameter_counts(name, shape, features, paper):
    """Paper network sizes (MATH.md s.6 table): the presets' parameter counts match the published ones,
    to the paper's rounding (0.05M) for the two exact architectures and to 1 % for the VDM approximation.
    Built on the meta device: counted, never allocated or run."""
    with torch.device("meta"):
        net = build_backbone(name, shape, features, features)
    n = count_parameters(net)
    tol = 0.01 * paper if name == "unet_cifar_vdm" else 0.05e6
    assert abs(n - paper) <= tol, f"{name}: {n / 1e6:.2f}M vs paper {paper / 1e6:.1f}M"


@pytest.mark.slow
@pytest.mark.parametrize("name, shape, features", [("unet_mnist_paper", (1, 28, 28), 1),
                                                   ("transformer_text8_paper", (256,), 27)])  # fmt: skip
def test_paper_preset_forward(name, shape, features):
    """The paper-size presets run a forward and backward pass on one example (slow on CPU)."""
    net = build_backbone(name, shape, features, features)
    h, t = inputs(shape, features, B=1)
    out = net(h, t)
    assert out.shape == (1, *shape, features) and torch.isfinite(out).all()
    out.square().mean().backward()


def test_sinusoidal_embedding_closed_form():
    """DDPM / Transformer features: emb[b, i] = cos(s t_b w_i), emb[b, half + i] = sin(s t_b w_i),
    w_i = P^(-i/half); computed here in float64 from the formula. Float32 even under bf16 autocast."""
    t = torch.tensor([0.0, 0.3, 1.0])
    dim, s, P = 10, 1000.0, 10000.0
    half = dim // 2
    w = torch.tensor([P ** (-i / half) for i in range(half)], dtype=torch.float64)
    arg = s * t.double()[:, None] * w
    want = torch.cat([arg.cos(), arg.sin()], -1).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = sinusoidal_embedding(t, dim, s, P)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)  # float32 sin of arguments up to 1000
    assert sinusoidal_embedding(t, 7).shape == (3, 7)


def test_sinusoidal_positions_closed_form():
    """Attention-is-all-you-need positions: pe[p, 2i] = sin(p / base^(2i/d)), pe[p, 2i+1] = cos(same)."""
    pe = sinusoidal_positions(6, 8, 1000.0)
    for p, i in [(0, 0), (3, 1), (5, 3)]:
        a = p / 1000.0 ** (2 * i / 8)
        assert pe[p, 2 * i].item() == pytest.approx(math.sin(a), abs=1e-6)
        assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(a), abs=1e-6)


def test_channel_packing_roundtrip():
    """The image adapters pack (B, C, H, W, F) into channel c*F + f and unpack exactly."""
    h = torch.randn(2, 3, 4, 5, 6)
    x = to_channels(h)
    assert x.shape == (2, 18, 4, 5)
    assert torch.equal(x[:, 2 * 6 + 4], h[:, 2, :, :, 4])
    assert torch.equal(from_channels(x, 3), h)


def test_count_parameters():
    """count_parameters counts trainable elements once; frozen ones only on request."""
    net = build_backbone("mlp", (3,), 1, 1, width=4, depth=1, time_dim=2)
    total = sum(p.numel() for p in net.parameters())
    assert count_parameters(net) == total
    net.out.weight.requires_grad_(False)
    assert count_parameters(net) == total - net.out.weight.numel()
    assert count_parameters(net, trainable_only=False) == total
