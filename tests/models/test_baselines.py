"""Tests for the canvas baselines (:mod:`atomizer.models.baselines`) on real BigEarthNet patches."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from atomizer.atoms.canvas import CANVAS_BANDS, CanvasBatch, canvas_batch, image_gsd, to_canvas
from atomizer.atoms.encodings import PHYSICAL_SCALING, VALUE_CLAMP
from atomizer.data.base import multi_hot
from atomizer.data.datasets import ben19_classes
from atomizer.data.modalities import load_modalities, simulate
from atomizer.data.readers import open_image
from atomizer.models.baselines import ScaleMAEBaseline, ViTBaseline, sincos_pos_embed_2d
from atomizer.models.registry import architectures, build_from_config, build_model, config_class, model_class

#: Every registered model that reads the canvas (the baselines), built by the one factory.
CANVAS_MODELS = sorted(a for a in architectures() if model_class(a).input_type is CanvasBatch)


def test_every_baseline_is_registered():
    assert CANVAS_MODELS == ["perceiver", "resnet", "s2mae", "scalemae", "vit"]


CH = {b: i for i, b in enumerate(CANVAS_BANDS)}


def labelled_patches(root: Path) -> list[tuple[Path, list[str]]]:
    """(npz path, 19-class labels) of every patch of ``root`` listed in its metadata.json."""
    meta = json.loads((root / "metadata.json").read_text())
    out = []
    for m in meta:
        p = root / "patches" / f"{m['patch_id']}.npz"
        if p.is_file() and m.get("labels_19"):
            out.append((p, list(m["labels_19"])))
    return out


def prior_loss(y: torch.Tensor) -> float:
    """BCE of the best constant predictor (each class's frequency in ``y``)."""
    p = y.mean(0).clamp(1e-6, 1 - 1e-6)
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


def reference_normalise(da) -> np.ndarray:
    """Independent re-statement of the canvas value scaling of one optical band (numpy, float64)."""
    a = da.attrs
    raw = np.asarray(da.values).astype(np.float64)
    phys = (raw + a["dn_offset"]) * a["dn_scale"]
    c, h = PHYSICAL_SCALING["optical"]
    out = np.clip((phys - c) / h, -VALUE_CLAMP, VALUE_CLAMP)
    bad = ~np.isfinite(raw) | (raw == a["nodata"])
    return np.where(bad, 0.0, out)


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D linear interpolation with half-pixel centres, clamped at the edges."""
    w = np.zeros((n_out, n_in))
    for k in range(n_out):
        s = min(max((k + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
        i0 = int(math.floor(s))
        i1 = min(i0 + 1, n_in - 1)
        w[k, i0] += 1 - (s - i0)
        w[k, i1] += s - i0
    return w


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def root(ben_patch_paths) -> Path:
    """The BigEarthNet folder (``patches/``, ``metadata.json``) chosen by conftest: embedded slice first."""
    return ben_patch_paths[0].parent.parent


@pytest.fixture(scope="module")
def image(ben_patch_paths):
    """One native BigEarthNet patch (bands at 10, 20 and 60 m)."""
    return open_image(ben_patch_paths[0])


@pytest.fixture(scope="module")
def test_modalities():
    return load_modalities("bigearthnet_test")


@pytest.fixture(scope="module")
def train_set(root, test_modalities):
    """Four labelled real patches with label sets as different as possible (greedy on the prior loss).

    Two stay native (10 m, 12 bands); two are seen through test modalities T2 (40 m, 6 bands) and T6
    (16 m, 6 bands, a zero frame), so the batch mixes GSDs and ScaleMAE differs from the ViT.
    """
    recs = labelled_patches(root)
    if len(recs) < 4:
        pytest.fail(f"{root}: need 4 labelled patches for the overfit test, found {len(recs)}")
    classes = ben19_classes(root / "label_nomenclature.json")
    ys = torch.stack([multi_hot(labels, classes) for _, labels in recs])
    chosen: list[int] = []
    for _ in range(4):
        rest = [i for i in range(len(recs)) if i not in chosen]
        chosen.append(max(rest, key=lambda i: (prior_loss(ys[chosen + [i]]), -i)))
    images = [open_image(recs[i][0]) for i in chosen]
    images[2] = simulate(images[2], test_modalities["T2"])
    images[3] = simulate(images[3], test_modalities["T6"])
    batch = canvas_batch(images)
    assert batch.gsd.tolist() == [10.0, 10.0, 40.0, 16.0]
    return batch, ys[chosen]


# --------------------------------------------------------------------------------------------------
# The canvas protocol
# --------------------------------------------------------------------------------------------------


def test_canvas_shape_and_zero_filled_missing_bands(image, test_modalities):
    canvas, present = to_canvas(image)
    assert canvas.shape == (12, 120, 120) and canvas.dtype == torch.float32
    assert present.dtype == torch.bool and bool(present.all())
    assert all(float(canvas[c].abs().max()) > 0 for c in range(12))

    t1 = test_modalities["T1"]  # B02, B03, B04 only
    canvas, present = to_canvas(simulate(image, t1))
    assert [CANVAS_BANDS[c] for c in np.flatnonzero(present.numpy())] == ["B02", "B03", "B04"]
    for c, name in enumerate(CANVAS_BANDS):
        if name in t1.bands:
            assert float(canvas[c].abs().max()) > 0, name
        else:
            assert torch.equal(canvas[c], torch.zeros(120, 120)), f"missing band {name} is not zero-filled"


def test_native_10m_band_is_placed_unchanged(image):
    canvas, _ = to_canvas(image)
    for name in ("B02", "B04", "B08"):
        want = reference_normalise(image[name])
        assert want.shape == (120, 120)
        np.testing.assert_allclose(canvas[CH[name]].numpy(), want, rtol=0, atol=1e-6, err_msg=name)


def test_nodata_pixels_read_zero(image):
    img = image.copy(deep=True)
    arr = img["B03"].values
    arr[10:20, 30:50] = img["B03"].attrs["nodata"]
    canvas, present = to_canvas(img)
    assert bool(present[CH["B03"]])
    assert torch.equal(canvas[CH["B03"], 10:20, 30:50], torch.zeros(10, 20))
    np.testing.assert_allclose(canvas[CH["B03"], 30:, :].numpy(), reference_normalise(image["B03"])[30:, :], atol=1e-6)


def test_20m_and_60m_bands_are_upsampled_bilinearly(image):
    canvas, _ = to_canvas(image)
    for name, n_in in (("B05", 60), ("B09", 20)):
        src = reference_normalise(image[name])
        assert src.shape == (n_in, n_in)
        m = bilinear_matrix(n_in, 120)
        np.testing.assert_allclose(canvas[CH[name]].numpy(), m @ src @ m.T, atol=1e-5, err_msg=name)


def test_coarse_modality_is_resampled_and_centred(image, test_modalities):
    # T6: 70 px at 16 m = 1120 m of ground -> 112 canvas px at 10 m, centred in 120: a 4 px zero frame.
    t6 = test_modalities["T6"]
    sim = simulate(image, t6)
    canvas, present = to_canvas(sim)
    assert sorted(CANVAS_BANDS[c] for c in np.flatnonzero(present.numpy())) == sorted(t6.bands)
    for name in t6.bands:
        src = reference_normalise(sim[name])
        g = float(sim[name].attrs["gsd_m"])
        assert round(src.shape[0] * g / 10.0) == 112, name  # 70 px at 16 m, or 56 px of a 20 m band
        c = canvas[CH[name]]
        frame = torch.ones(120, 120, dtype=torch.bool)
        frame[4:116, 4:116] = False
        assert torch.equal(c[frame], torch.zeros(int(frame.sum()))), f"{name}: border is not zero"
        m = bilinear_matrix(src.shape[0], 112)
        np.testing.assert_allclose(c[4:116, 4:116].numpy(), m @ src @ m.T, atol=1e-5, err_msg=name)
        assert float((c[4:116, 4:116] != 0).float().mean()) > 0.99

    # T2: 30 px at 40 m = 1200 m -> the whole canvas, a x4 bilinear upsampling, no frame.
    t2 = test_modalities["T2"]
    sim = simulate(image, t2)
    canvas, _ = to_canvas(sim)
    src = reference_normalise(sim["B04"])
    assert src.shape == (30, 30)
    m = bilinear_matrix(30, 120)
    np.testing.assert_allclose(canvas[CH["B04"]].numpy(), m @ src @ m.T, atol=1e-5)
    assert float((canvas[CH["B04"], [0, -1], :] != 0).float().mean()) > 0.99


def test_canvas_crops_or_pads_to_size(image):
    full, _ = to_canvas(image)
    small, _ = to_canvas(image, size_px=100)
    assert torch.equal(small, full[:, 10:110, 10:110])
    big, _ = to_canvas(image, size_px=140)
    assert torch.equal(big[:, 10:130, 10:130], full)
    assert float(big[:, :10].abs().sum()) == 0 and float(big[:, :, 130:].abs().sum()) == 0
    coarse, _ = to_canvas(image, size_px=60, gsd_m=20.0)  # 1200 m at 20 m: B05 lands unchanged
    np.testing.assert_allclose(coarse[CH["B05"]].numpy(), reference_normalise(image["B05"]), atol=1e-6)


def test_canvas_band_subset_and_no_band(image):
    canvas, present = to_canvas(image, canvas_bands=("B04", "B03", "B02"))
    assert canvas.shape == (3, 120, 120) and bool(present.all())
    np.testing.assert_allclose(canvas[0].numpy(), reference_normalise(image["B04"]), atol=1e-6)
    with pytest.raises(ValueError, match="none of the canvas bands"):
        to_canvas(image[["B02"]], canvas_bands=("B05",))


def test_canvas_batch_reports_modality_gsd(image, test_modalities):
    images = [image] + [simulate(image, test_modalities[n]) for n in ("T3", "T5", "T2")]
    batch = canvas_batch(images)
    x, gsd = batch.pixels, batch.gsd
    assert x.shape == (4, 12, 120, 120)
    assert gsd.tolist() == [10.0, 12.0, 60.0, 40.0]
    assert image_gsd(image) == 10.0  # not 60 m, although the patch holds B01 and B09
    assert torch.equal(x[1], to_canvas(images[1])[0])
    assert batch.present.shape == (4, 12) and bool(batch.present[0].all())
    # one batch protocol: a batch of one per image, collated, equals the batch of all
    singles = CanvasBatch.collate([CanvasBatch.from_image(im, None) for im in images])
    assert torch.equal(singles.gsd, gsd) and singles.pixels.shape[0] == 4
    assert batch.to("cpu").num_sets == 4


# --------------------------------------------------------------------------------------------------
# Positional embedding
# --------------------------------------------------------------------------------------------------


def test_sincos_pos_embed_2d():
    pe = sincos_pos_embed_2d(3, 5, 16)
    assert pe.shape == (15, 16)
    # Row-major grid; x (column) in the first half, y (row) in the second; frequency 0 is 1 rad/unit.
    i, j = 2, 3
    assert math.isclose(float(pe[i * 5 + j, 0]), math.sin(j), abs_tol=1e-6)
    assert math.isclose(float(pe[i * 5 + j, 8]), math.sin(i), abs_tol=1e-6)
    assert math.isclose(float(pe[i * 5 + j, 12]), math.cos(i), abs_tol=1e-6)
    batched = sincos_pos_embed_2d(3, 5, 16, torch.tensor([1.0, 2.0, 0.0]))
    assert batched.shape == (3, 15, 16)
    torch.testing.assert_close(batched[0], pe)
    torch.testing.assert_close(batched[1], sincos_pos_embed_2d(3, 5, 16, 2.0))
    assert not torch.allclose(batched[1], pe)
    assert torch.equal(batched[2], torch.cat([torch.zeros(15, 4), torch.ones(15, 4)] * 2, 1))
    with pytest.raises(ValueError):
        sincos_pos_embed_2d(2, 2, 10)


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CANVAS_MODELS)
def test_output_shape_on_two_modalities(name, image, test_modalities):
    torch.manual_seed(0)
    model = build_model(name, "tiny").eval()
    assert model.input_type is CanvasBatch
    assert model.cfg == config_class(name).preset("tiny")
    native = canvas_batch([image, image])
    coarse = canvas_batch([simulate(image, test_modalities["T5"]), simulate(image, test_modalities["T3"])])
    with torch.no_grad():
        out_native = model(native)
        out_coarse = model(coarse)
    assert out_native.shape == (2, 19) and out_coarse.shape == (2, 19)
    assert bool(torch.isfinite(out_native).all()) and bool(torch.isfinite(out_coarse).all())
    assert not torch.allclose(out_native[0], out_coarse[0], atol=1e-4)
    with pytest.raises(ValueError):
        model(CanvasBatch(native.pixels[:, :11], native.gsd, native.present[:, :11]))
    with pytest.raises(TypeError, match="CanvasBatch"):
        model(native.pixels)


def test_scalemae_uses_gsd_and_vit_does_not(image):
    base = canvas_batch([image, image])
    gsd_a, gsd_b = torch.tensor([10.0, 10.0]), torch.tensor([10.0, 40.0])

    def at(gsd):
        return CanvasBatch(base.pixels, gsd, base.present)

    torch.manual_seed(0)
    vit = build_model("vit", "tiny").eval()
    torch.manual_seed(0)
    smae = build_model("scalemae", "tiny").eval()
    assert type(vit) is ViTBaseline and isinstance(smae, ScaleMAEBaseline)
    with torch.no_grad():
        torch.testing.assert_close(vit(at(gsd_a)), vit(at(gsd_b)), rtol=0, atol=0)
        a, b = smae(at(gsd_a)), smae(at(gsd_b))
        # Same weights (same seed, same architecture) and gsd at the reference: ScaleMAE == ViT.
        torch.testing.assert_close(a, vit(at(gsd_a)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)  # sample 0 kept its gsd
    assert float((a[1] - b[1]).abs().max()) > 1e-3
    with pytest.raises(TypeError):
        smae(base.pixels)


@pytest.mark.parametrize("name", CANVAS_MODELS)
def test_config_roundtrip_and_presets(name):
    cls = config_class(name)
    for preset in ("tiny", "small"):  # every canvas model has both presets
        cfg = cls.preset(preset)
        d = json.loads(json.dumps(cfg.to_dict()))
        assert cls.from_dict(d) == cfg
    small = build_model(name, "small")
    tiny = build_model(name, "tiny", num_classes=10)
    assert tiny.cfg.num_classes == 10
    assert tiny.num_parameters() < small.num_parameters()
    assert 100_000 <= small.num_parameters() <= 1_000_000
    rebuilt = build_from_config(name, tiny.cfg.to_dict())
    assert type(rebuilt) is type(tiny) and rebuilt.cfg == tiny.cfg
    rebuilt.load_state_dict(tiny.state_dict())
    with pytest.raises(KeyError):
        cls.preset("huge")
    with pytest.raises(ValueError, match="unknown"):
        cls.from_dict({**cls.preset("tiny").to_dict(), "bogus": 1})
    with pytest.raises(KeyError):
        build_model("unet")


# Steps and learning rate per baseline: enough to memorise 4 patches in a few seconds on CPU.
OVERFIT = {
    "resnet": (60, 3e-3),
    "vit": (60, 3e-3),
    "scalemae": (60, 3e-3),
    "perceiver": (60, 3e-3),
    "s2mae": (60, 3e-3),
}


@pytest.mark.parametrize("name", CANVAS_MODELS)
def test_tiny_model_overfits_four_real_patches(name, train_set):
    batch, y = train_set
    prior = prior_loss(y)
    steps, lr = OVERFIT[name]
    torch.manual_seed(0)
    model = build_model(name, "tiny")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(model(batch), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    final = float(np.mean(losses[-5:]))
    assert final < losses[0] / 10, (losses[0], final)
    assert final < prior / 4, f"final loss {final:.4f} does not beat the label prior {prior:.4f}"
