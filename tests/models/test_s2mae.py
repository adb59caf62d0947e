"""S2MAE (:mod:`atomizer.models.s2mae`) on real EuroSAT tiles: registry entry, shapes of both heads, exact
mask ratio, the [0, 1] target, absent bands dropped (not zero-filled), and a band never seen in training."""

from __future__ import annotations

import json

import pytest
import torch

from atomizer.atoms.canvas import CANVAS_BANDS, CanvasBatch, EmptyCanvasError, canvas_batch
from atomizer.atoms.dense import DenseQueries
from atomizer.data.bands import get_sensor
from atomizer.data.datasets import open_dataset
from atomizer.data.modalities import load_modalities, simulate
from atomizer.models.registry import architectures, build_from_config, build_model, config_class, input_type
from atomizer.models.s2mae import S2MAE, S2MAEConfig, encoder_state, sincos_1d

CH = {b: i for i, b in enumerate(CANVAS_BANDS)}


@pytest.fixture(scope="module")
def images():
    ds = open_dataset("eurosat", "train")
    return [ds[i]["image"] for i in (0, 15, 40, 70)]


@pytest.fixture(scope="module")
def full(images) -> CanvasBatch:
    """Four EuroSAT tiles with every canvas band, on the 64 px, 10 m canvas."""
    return canvas_batch(images, size_px=64)


@pytest.fixture(scope="module")
def train_modalities(images) -> CanvasBatch:
    """The same tiles through the four EuroSAT training modalities (band subsets; B8A is in none)."""
    mods = load_modalities("eurosat_train").modalities
    return canvas_batch([simulate(im, m) for im, m in zip(images, mods)], size_px=64)


def tiny(**kw) -> S2MAE:
    torch.manual_seed(0)
    return S2MAE(S2MAEConfig.preset("tiny", num_classes=10, **kw))


def with_present(batch: CanvasBatch, present: torch.Tensor) -> CanvasBatch:
    return CanvasBatch(batch.pixels, batch.gsd, present, batch.extent_m)


def test_registered_as_a_canvas_model_with_presets():
    assert "s2mae" in architectures()
    model = build_model("s2mae", "tiny", num_classes=7)
    assert isinstance(model, S2MAE) and input_type(model) is CanvasBatch and model.cfg.num_classes == 7
    cls = config_class("s2mae")
    for name in ("tiny", "small", "paper"):
        cfg = cls.preset(name)
        assert cls.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert build_model("s2mae", "tiny").num_parameters() < build_model("s2mae", "small").num_parameters()
    rebuilt = build_from_config("s2mae", model.cfg.to_dict())
    rebuilt.load_state_dict(model.state_dict())
    with pytest.raises(KeyError, match="preset"):
        cls.preset("huge")
    with pytest.raises(ValueError, match="group_size"):
        S2MAEConfig.from_dict({"group_size": 5})
    with pytest.raises(ValueError, match="spectral_embedding"):
        S2MAEConfig.from_dict({"spectral_embedding": "rbf"})
    with pytest.raises(ValueError, match="task"):
        S2MAEConfig.from_dict({"task": "detection"})


def test_classification_and_segmentation_shapes(full):
    cls = tiny().eval()
    seg = tiny(task="segmentation").eval()
    queries = DenseQueries.grids([64, 32, 16, 8], [10.0, 20.0, 40.0, 80.0])
    with torch.no_grad():
        logits = cls(full)
        dense = seg.dense(full)
        per_pixel = seg(full, queries=queries)
    assert logits.shape == (4, 10) and bool(torch.isfinite(logits).all())
    assert dense.shape == (4, 10, 64, 64)
    assert per_pixel.shape == (4, 64 * 64, 10) and bool(torch.isfinite(per_pixel).all())
    # a 64 x 64 query grid at the canvas GSD reads the dense output at the canvas pixel centres
    torch.testing.assert_close(per_pixel[0].T.reshape(10, 64, 64), dense[0], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="queries"):
        seg(full)
    with pytest.raises(ValueError, match="queries"):
        cls(full, queries=queries)
    with pytest.raises(ValueError, match="mae_loss"):
        tiny(task="pretraining")(full)


def test_bad_input_is_refused_in_one_line(full):
    model = tiny().eval()
    with pytest.raises(TypeError, match="CanvasBatch"):
        model(full.pixels)
    with pytest.raises(ValueError, match="12"):
        model(CanvasBatch(full.pixels[:, :11], full.gsd, full.present[:, :11]))
    with pytest.raises(ValueError, match="patch size"):
        model(CanvasBatch(full.pixels[..., :60, :60], full.gsd, full.present))
    nothing = full.present.clone()
    nothing[1] = False
    with pytest.raises(EmptyCanvasError, match=r"\[1\]"):
        model(with_present(full, nothing))


@pytest.mark.parametrize("ratio", [0.9, 0.75])
def test_mask_ratio_is_honoured_exactly(full, train_modalities, ratio):
    model = tiny(task="pretraining")
    for batch in (full, train_modalities):
        _, kept, _, _ = model.cubes(batch)
        out = model.mae_loss(batch, ratio, torch.Generator().manual_seed(1))
        n = kept.sum(1)
        assert out.visible.sum(1).tolist() == (n - torch.round(ratio * n.double()).long()).tolist()
        assert out.hidden.sum(1).tolist() == torch.round(ratio * n.double()).long().tolist()
        assert not (out.visible & out.hidden).any() and torch.equal(out.visible | out.hidden, kept)
        assert bool(torch.isfinite(out.loss)) and float(out.loss.detach()) > 0
    # all 12 bands: 4 groups x 64 patches; 90 % hides 230 of 256 and shows 26
    out = model.mae_loss(full, 0.9, torch.Generator().manual_seed(1))
    assert out.visible.sum(1).tolist() == [26] * 4
    # the draw follows the generator
    again = model.mae_loss(full, 0.9, torch.Generator().manual_seed(1))
    other = model.mae_loss(full, 0.9, torch.Generator().manual_seed(2))
    assert torch.equal(out.visible, again.visible) and not torch.equal(out.visible, other.visible)
    with pytest.raises(ValueError, match="mask_ratio"):
        model.mae_loss(full, 1.0)


def test_normalised_target_is_in_unit_range_per_cube(full, train_modalities):
    model = tiny(task="pretraining")
    out = model.mae_loss(full, 0.9, torch.Generator().manual_seed(0))
    t = out.target[out.hidden]  # (hidden cubes, P)
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    # min-max per cube: a textured cube spans exactly [0, 1]
    textured = (t.amax(1) - t.amin(1)) > 0
    assert int(textured.sum()) > 0.9 * len(t)
    assert torch.allclose(t[textured].amin(1), torch.zeros(1)) and torch.allclose(t[textured].amax(1), torch.ones(1))
    # absent channels of a kept cube are left out of the normalisation (they read 0 in the target)
    out = model.mae_loss(train_modalities, 0.9, torch.Generator().manual_seed(0))
    assert float(out.target.min()) >= 0.0 and float(out.target.max()) <= 1.0
    raw = tiny(task="pretraining", norm_target=False).mae_loss(full, 0.9, torch.Generator().manual_seed(0))
    cubes = model.cubes(full)[0]
    assert torch.equal(raw.target, cubes) and float(raw.target.min()) < 0.0  # canvas values, not [0, 1]


def test_absent_bands_drop_their_cubes_instead_of_reading_zeros(full, train_modalities):
    model = tiny().eval()
    # the training modalities' canvases: absent channels are zero on the canvas and marked absent
    assert not bool(train_modalities.present.all())
    _, kept, _, _ = model.cubes(train_modalities)
    assert kept.sum(1).tolist() != [256] * 4  # some groups have no band of the modality: dropped
    with torch.no_grad():
        dropped = model(train_modalities)
        zero_filled = model(with_present(train_modalities, torch.ones_like(train_modalities.present)))
        alone = torch.cat([model(CanvasBatch.collate([_one(train_modalities, s)])) for s in range(4)])
    assert bool(torch.isfinite(dropped).all())
    assert float((dropped - zero_filled).abs().max()) > 1e-3
    # images of different band sets share a batch: padding is masked, each answers as if alone
    torch.testing.assert_close(dropped, alone, rtol=1e-4, atol=1e-5)
    # removing a whole group from the present set removes its tokens (its pixels no longer matter)
    present = full.present.clone()
    present[:, CH["B09"] :] = False  # group (B09, B11, B12)
    noisy = full.pixels.clone()
    noisy[:, CH["B09"] :] = torch.randn_like(noisy[:, CH["B09"] :])
    with torch.no_grad():
        a = model(with_present(full, present))
        b = model(CanvasBatch(noisy, full.gsd, present, full.extent_m))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def _one(batch: CanvasBatch, s: int) -> CanvasBatch:
    return CanvasBatch(batch.pixels[s : s + 1], batch.gsd[s : s + 1], batch.present[s : s + 1], batch.extent_m)


def _train(model: S2MAE, batch: CanvasBatch, steps: int = 3) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    y = torch.arange(batch.num_sets) % model.cfg.num_classes
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(batch), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_band_never_seen_in_training_learned_keeps_its_initial_row(train_modalities):
    """``learned``: B8A (never in the EuroSAT training modalities) is a group of its own with group_size 1;
    its cubes are always dropped in training, so its row gets no gradient and stays at its initial value."""
    assert not bool(train_modalities.present[:, CH["B8A"]].any())
    model = tiny(group_size=1)
    before = model.embed.spectral.detach().clone()
    _train(model, train_modalities)
    after = model.embed.spectral.detach()
    assert torch.equal(after[CH["B8A"]], before[CH["B8A"]])  # never updated
    seen = train_modalities.present.any(0)
    assert bool((after[seen] != before[seen]).any(1).all())  # every band seen in training moved


def test_band_never_seen_in_training_wavelength_gets_its_wavelength_code(full, train_modalities):
    """``wavelength``: the spectral code is the sin-cos code of the band's wavelength, computed, not trained:
    the unseen B8A is embedded at 864.7 nm, between B08 (832.8 nm) and B09 (945.1 nm)."""
    model = tiny(group_size=1, spectral_embedding="wavelength")
    assert not any("spectral" in name for name, _ in model.named_parameters())
    wl = get_sensor("sentinel2").band("B8A").wavelength_nm
    emb = model.group_embedding()
    torch.testing.assert_close(emb[CH["B8A"]], sincos_1d(torch.tensor([wl]), model.cfg.dim)[0])
    assert not torch.allclose(emb[CH["B8A"]], sincos_1d(torch.tensor([wl + 20.0]), model.cfg.dim)[0], atol=1e-3)
    d = lambda a, b: float((emb[CH[a]] - emb[CH[b]]).norm())  # noqa: E731
    assert d("B8A", "B08") < d("B8A", "B02")  # near wavelengths, near codes
    _train(model, train_modalities)
    torch.testing.assert_close(model.group_embedding()[CH["B8A"]], emb[CH["B8A"]])  # the same after training
    # at test time B8A is read: its cubes are tokens, with its code (the output depends on it)
    present = full.present.clone()
    present[:, CH["B8A"]] = False
    model.eval()
    with torch.no_grad():
        assert float((model(full) - model(with_present(full, present))).abs().max()) > 1e-4


def test_encoder_state_initialises_classifier_and_segmenter_from_pretraining():
    pre = tiny(task="pretraining")
    state, stored = pre.state_dict(), pre.cfg.to_dict()
    for task in ("classification", "segmentation"):
        model = tiny(task=task)
        enc = encoder_state(model, state, stored)
        assert enc and not any(k.startswith(("mae.", "fc.", "dense_head.")) for k in enc)
        model.load_state_dict(enc, strict=False)
        assert torch.equal(model.cube_proj.weight, pre.cube_proj.weight)
    with pytest.raises(ValueError, match="dim"):
        encoder_state(S2MAE(S2MAEConfig.preset("tiny", dim=32, decoder_dim=32)), state, stored)
