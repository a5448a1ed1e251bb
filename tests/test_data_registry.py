"""The data registry as a whole: every data set's spec, the shared batch contract, `describe` and `show`."""

import pytest
import torch
from data_writers import write_text8

from suite.data import dataset_names, get_dataset
from suite.data import show as show_mod

EXPECTED = {  # name: (kind, K, shape, stand_in_for)
    "swiss_roll": ("continuous", None, (2,), None),
    "binary_heartbeat": ("discrete", 2, (20,), None),
    "binarized_mnist": ("discrete", 2, (1, 28, 28), None),
    "mnist_256": ("discretised", 256, (1, 28, 28), None),
    "mnist_16": ("discretised", 16, (1, 28, 28), None),
    "fashion_mnist_256": ("discretised", 256, (1, 28, 28), None),
    "fashion_mnist_16": ("discretised", 16, (1, 28, 28), None),
    "cifar10_256": ("discretised", 256, (3, 32, 32), None),
    "cifar10_16": ("discretised", 16, (3, 32, 32), None),
    "text8": ("discrete", 27, (256,), None),
    "mnist_embedded_binarized": ("discrete", 2, (1, 28, 28), "binarized_mnist"),
    "mnist_embedded_256": ("discretised", 256, (1, 28, 28), "mnist"),
    "mnist_embedded_16": ("discretised", 16, (1, 28, 28), "mnist"),
    "text_embedded": ("discrete", 27, (256,), "text8"),
    # ground truth known (suite/data/truth): sampled from models fitted to the embedded data
    "text_hmm": ("discrete", 27, (128,), None),
    "mnist_mixture_binarized": ("discrete", 2, (1, 28, 28), None),
    "mnist_mixture_256": ("discretised", 256, (1, 28, 28), None),
    "mnist_mixture_16": ("discretised", 16, (1, 28, 28), None),
    "gmm_2d": ("continuous", None, (2,), None),
}
# data sets whose bytes are generated or shipped: the batch contract is checked on the real thing
LOCAL = ["swiss_roll", "binary_heartbeat", "mnist_embedded_binarized", "mnist_embedded_256", "mnist_embedded_16",
         "text_embedded", "text_hmm", "mnist_mixture_binarized", "mnist_mixture_256", "mnist_mixture_16", "gmm_2d"]


def test_every_data_set_is_registered_with_its_spec(tmp_path):
    """The names of issue 2 with kind / K / shape / stand-in; constructing reads no file (an empty data dir)."""
    names = [n for n in dataset_names() if not n.startswith("_")]
    assert sorted(names) == sorted(EXPECTED)
    for name, (kind, K, shape, stand_in) in EXPECTED.items():
        spec = get_dataset(name, tmp_path / "empty").spec
        assert (spec.kind, spec.num_classes, spec.shape, spec.stand_in_for) == (kind, K, shape, stand_in), name
        assert spec.name == name and spec.source and set(spec.split_sizes) == {"train", "val", "test"}
    with pytest.raises(KeyError, match="unknown data set 'nope'"):
        get_dataset("nope")


@pytest.mark.parametrize("name", LOCAL)
def test_batch_contract(name):
    """Dataset contract (suite/data/base.py): batches shaped (B, *shape); continuous float32, discretised
    float32 bin centres (2k - 1)/K - 1, discrete int64 in 0..K-1; a val pass yields every example exactly once
    and ranks shard it disjointly (interleaved)."""
    ds = get_dataset(name)
    spec = ds.spec
    if not ds.present():
        assert "embedded" not in name, f"{name}: the shipped asset is missing from suite/data/assets"
        pytest.skip(f"{name}: its files need a download or --data-dir")
    x = next(ds.batches("train", 16, seed=0))
    assert x.shape == (16, *spec.shape)
    if spec.kind == "continuous":
        assert x.dtype == torch.float32 and torch.isfinite(x).all()
    elif spec.kind == "discretised":
        assert x.dtype == torch.float32 and torch.isin(x, spec.bin_centres.float()).all()
    else:
        assert x.dtype == torch.int64 and x.min() >= 0 and x.max() < spec.K
    n = ds.num_examples("val")
    full = torch.cat(list(ds.batches("val", 256, seed=3, shuffle=False)))
    assert len(full) == n == spec.split_sizes["val"]
    if spec.kind != "discrete" or spec.K != 2 or "mnist" not in name:  # binarisation draws per rank, not per example
        shards = [torch.cat(list(ds.batches("val", 100, seed=3, rank=r, world_size=2))) for r in range(2)]
        assert torch.equal(shards[0], full[0::2]) and torch.equal(shards[1], full[1::2])


def test_describe_is_lazy_and_complete(tmp_path):
    """describe(): one row per data set with kind, K, shape, D, split sizes, presence, stand-in, source; it
    reads no data (a corrupt text8 file in the data dir counts as present without being parsed)."""
    write_text8(tmp_path / "text8", "NOT TEXT8 AT ALL", as_zip=False)
    df = show_mod.describe(tmp_path)
    assert list(df.columns) == ["name", "kind", "K", "shape", "D", "train", "val", "test", "present", "stand_in_for",
                                "source"]
    assert sorted(df["name"]) == sorted(EXPECTED)
    row = df.set_index("name")
    assert row.loc["text8", "present"] and not row.loc["cifar10_256", "present"]
    assert row.loc["cifar10_16", "D"] == 3072 and row.loc["cifar10_16", "shape"] == "3x32x32"
    assert row.loc["binary_heartbeat", "present"] and row.loc["text_embedded", "stand_in_for"] == "text8"


PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", ["mnist_embedded_binarized", "mnist_embedded_16", "swiss_roll", "binary_heartbeat"])
def test_show_draws_a_png(tmp_path, name):
    """show(): images -> a PNG grid, toys -> a scatter / line PNG, written where asked."""
    if not get_dataset(name).present():
        assert "embedded" not in name, f"{name}: the shipped asset is missing from suite/data/assets"
        pytest.skip(f"{name}: its files need a download or --data-dir")
    out = show_mod.show(name, tmp_path / "sub" / f"{name}.png", n=9, seed=1)
    assert out.read_bytes()[:8] == PNG


def test_show_text_returns_samples():
    """show() on text returns decoded strings of seq_len characters from the alphabet."""
    assert get_dataset("text_embedded").present(), "the shipped text asset is missing from suite/data/assets"
    res = show_mod.show("text_embedded", None, n=3, seed=0)
    assert len(res) == 3 and all(len(s) == 256 and set(s) <= set(" abcdefghijklmnopqrstuvwxyz") for s in res)


def test_image_grid_layout():
    """image_grid tiles N images in ceil(sqrt N) columns with 1-pixel gaps; [-1, 1] maps to [0, 1]; RGB last."""
    spec = get_dataset("cifar10_256", "/nowhere").spec
    x = torch.full((5, 3, 32, 32), -1.0)
    x[4] = 1.0
    g = show_mod.image_grid(spec, x)
    assert g.shape == (2 * 33 + 1, 3 * 33 + 1, 3)
    assert g[1, 1, 0] == 0.0 and g[34, 34, 0] == 1.0 and g[0, 0, 0] == 1.0  # pad is white


def test_describe_survives_a_broken_asset(monkeypatch, tmp_path):
    """A data set whose metadata cannot be read is listed as not present, with the reason, instead of
    breaking the whole listing."""
    from suite.data import embedded

    monkeypatch.setattr(embedded, "TEXT_ASSET", tmp_path / "gone.txt.xz")
    row = show_mod.describe(tmp_path).set_index("name").loc["text_embedded"]
    assert not row["present"] and "gone.json is missing" in row["source"]
