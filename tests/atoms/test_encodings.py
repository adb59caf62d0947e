"""Encodings: values against the formulas on hand-computed cases, and the properties the method needs."""

import math

import pytest
import torch

from atomizer.atoms.encodings import (
    DEFAULT_ANCHORS,
    AtomEncoder,
    EncodingConfig,
    fourier_features,
    fourier_frequencies,
    normalize_values,
    positional_encoding,
    positional_grid,
    rbf_spectral_encoding,
    time_encoding,
)
from atomizer.atoms.tokens import EXTRA_CHANNELS, tokenize
from atomizer.data.modalities import Modality, simulate
from atomizer.data.readers import open_image


def test_fourier_frequencies_linear():
    f = fourier_frequencies(4, 7.0)
    assert torch.allclose(f, torch.tensor([1.0, 3.0, 5.0, 7.0]))


def test_fourier_features_hand_computed():
    # gamma(0.5; L=2, f_max=3): f = [1, 3]; sin(pi/2)=1, sin(3pi/2)=-1, cos(pi/2)=0, cos(3pi/2)=0, raw 0.5
    out = fourier_features(torch.tensor([0.5]), 2, 3.0)
    assert torch.allclose(out, torch.tensor([[1.0, -1.0, 0.0, 0.0, 0.5]]), atol=1e-6)
    assert fourier_features(torch.zeros(3), 5, 9.0, include_raw=False).shape == (3, 10)


def test_normalize_values_physical_and_zscore():
    v = torch.tensor([0.0, 0.25, 0.5, 5.0, -15.0])
    extra = torch.tensor([-1.0, -1.0, -1.0, -1.0, float(EXTRA_CHANNELS.index("VV"))])
    x = normalize_values(v, extra)
    assert torch.allclose(x, torch.tensor([-1.0, 0.0, 1.0, 4.0, 0.0]))  # 5.0 clamps to 4
    z = normalize_values(v, extra, mean=torch.full_like(v, 0.5), std=torch.full_like(v, 0.25))
    assert torch.allclose(z[:3], torch.tensor([-2.0, -1.0, 0.0]))


def test_positional_matches_paper_formula():
    # Paper: gamma(x_d * g / G), x_d = (x - x_c) / (w / 2). With ref_m = G * w / 2 it equals gamma(offset / ref_m).
    w, g, G = 120, 20.0, 10.0
    x = torch.arange(w, dtype=torch.float32) + 0.5
    x_d = (x - w / 2) / (w / 2)
    paper = fourier_features(x_d * g / G, 8, 8.0)
    ours = positional_encoding((x - w / 2) * g, 8, 8.0, ref_m=G * w / 2)
    assert torch.allclose(paper, ours, atol=1e-5)


def test_same_ground_point_same_code_across_crops(ben_patch_paths):
    """Centred crops of different sizes and GSDs put a ground point at the same physical offset."""
    img = open_image(ben_patch_paths[0])
    enc = AtomEncoder(EncodingConfig())
    codes = {}
    for m in (Modality("a", 120, 10, ("B04",)), Modality("b", 60, 10, ("B04",)), Modality("c", 40, 20, ("B04",))):
        t = tokenize(simulate(img, m))
        x, y = t.positions()
        # the atom whose pixel covers the ground point 25 m east and 25 m north of the centre
        fx, fy = enc.coord_features(t.coord_x), enc.coord_features(t.coord_y)
        i = int(((x[0] - 25).abs() + (y[0] - 25).abs()).argmin())
        codes[m.name] = (float(x[0, i]), float(y[0, i]), fx[t.xi[0, i]], fy[t.yi[0, i]])
    # the 10 m crops put a pixel centre exactly on (25, 25): same code whatever the crop
    assert codes["a"][:2] == codes["b"][:2] == (25.0, 25.0)
    assert torch.equal(codes["a"][2], codes["b"][2]) and torch.equal(codes["a"][3], codes["b"][3])
    # the 20 m grid has a pixel centre at (30, 30): its code is the code of that physical offset
    assert codes["c"][:2] == (30.0, 30.0)
    assert torch.allclose(codes["c"][2], enc.coord_features(torch.tensor([30.0]))[0])


def test_coarser_gsd_varies_faster_per_pixel():
    fine = positional_grid(8, 10.0, 4, 4.0)
    coarse = positional_grid(8, 40.0, 4, 4.0)
    step_fine = (fine[0, 1, 0] - fine[0, 0, 0]).norm()
    step_coarse = (coarse[0, 1, 0] - coarse[0, 0, 0]).norm()
    assert step_coarse > 2 * step_fine


def test_rbf_hand_computed_single_anchor():
    # zero-width band at the anchor centre: response 1 -> normalised 1; extra channels zero
    out = rbf_spectral_encoding(torch.tensor([500.0]), torch.tensor([0.0]), anchors=[(500.0, 10.0)])
    assert out.shape == (1, 1 + len(EXTRA_CHANNELS))
    assert math.isclose(float(out[0, 0]), 1.0, rel_tol=1e-6)
    # two anchors, point band at 505: exp(-5^2 / (2*10^2)) and exp(-25^2 / (2*20^2)), then L2-normalised
    out = rbf_spectral_encoding(torch.tensor([505.0]), torch.tensor([0.0]), anchors=[(500, 10), (530, 20)])
    r = torch.tensor([math.exp(-0.125), math.exp(-0.78125)])
    assert torch.allclose(out[0, :2], r / r.norm(), atol=1e-6)


def test_rbf_width_matters_and_wider_bands_light_more_anchors():
    c = torch.tensor([832.8, 832.8])
    w = torch.tensor([21.0, 106.0])  # same centre, narrow vs Sentinel-2 B08 width
    out = rbf_spectral_encoding(c, w)[:, : len(DEFAULT_ANCHORS)]
    assert not torch.allclose(out[0], out[1], atol=1e-3)
    lit = (out > 0.1).sum(1)
    assert lit[1] > lit[0]


def test_rbf_finite_over_optical_range_and_special_bands():
    c = torch.linspace(350, 2500, 500)
    out = rbf_spectral_encoding(c, torch.full_like(c, 10.0))
    assert torch.isfinite(out).all()
    assert torch.allclose(out[:, : len(DEFAULT_ANCHORS)].norm(dim=1), torch.ones(500), atol=1e-5)
    sar = rbf_spectral_encoding(
        torch.tensor([5.5e7]), torch.tensor([0.0]), extra_channel=torch.tensor([EXTRA_CHANNELS.index("VH")])
    )
    assert sar[0, : len(DEFAULT_ANCHORS)].abs().sum() == 0
    assert sar[0, len(DEFAULT_ANCHORS) + EXTRA_CHANNELS.index("VH")] == 1


def test_time_encoding_circle():
    out = time_encoding(torch.tensor([0.0, 365.25 / 4]), torch.tensor([2015.0, 2025.0]))
    assert torch.allclose(out, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]), atol=1e-6)


def test_encoder_token_dim(ben_patch_paths):
    cfg = EncodingConfig(value_bands=4, pos_bands=6, gsd_bands=2)
    t = tokenize(open_image(ben_patch_paths[0]))
    tok = AtomEncoder(cfg).materialize(t)
    assert tok.shape == (1, 80_000, cfg.token_dim)
    assert cfg.token_dim == 9 + 2 * 13 + len(DEFAULT_ANCHORS) + len(EXTRA_CHANNELS) + 5
    assert torch.isfinite(tok).all()


@pytest.mark.parametrize("bad", [[(500, 0.0)], [(1, 2, 3)]])
def test_bad_anchors_refused(bad):
    with pytest.raises(ValueError):
        rbf_spectral_encoding(torch.tensor([500.0]), torch.tensor([10.0]), anchors=bad)


def test_acquisition_time_encoding_is_optional_and_per_image(ben_patch_paths):
    from atomizer.models.atomizer import Atomizer, AtomizerConfig

    img = open_image(ben_patch_paths[0])
    assert img.attrs["acquisition_date"][:4] == "2017"
    t = tokenize(img)
    doy, year = t.band_table[0, 4:].tolist()
    assert 1 <= doy <= 366 and year == 2017
    off = EncodingConfig()
    on = EncodingConfig(use_time=True)
    assert on.band_dim == off.band_dim + 3
    feats = AtomEncoder(on).band_features(t.band_table)
    assert torch.allclose(feats[:, -3:], time_encoding(t.band_table[:, 4], t.band_table[:, 5]))
    later = img.copy()
    later.attrs["acquisition_date"] = "2017-12-24"
    torch.manual_seed(0)
    model = Atomizer(AtomizerConfig.preset("tiny", encoding=on)).eval()
    with torch.no_grad():
        assert not torch.allclose(model(t), model(tokenize(later)))
    undated = img.copy()
    undated.attrs.pop("acquisition_date")
    assert torch.isnan(tokenize(undated).band_table[:, 4:]).all()
    assert torch.isfinite(AtomEncoder(on).band_features(tokenize(undated).band_table)).all()


def test_bands_outside_the_anchors_are_flagged_once():
    """A band far from every anchor gets a confident-looking normalised code; the encoder says so, naming it."""
    import warnings

    from atomizer.atoms.encodings import (
        DEFAULT_ANCHORS,
        MIN_ANCHOR_RESPONSE,
        AtomEncoder,
        EncodingConfig,
        anchor_coverage,
    )
    from atomizer.data.bands import get_sensor

    s2 = get_sensor("sentinel2")
    cov = anchor_coverage(
        torch.tensor([b.wavelength_nm for b in s2.bands]), torch.tensor([b.bandwidth_nm for b in s2.bands])
    )
    assert bool((cov >= MIN_ANCHOR_RESPONSE).all())  # every Sentinel-2 band is covered
    far = anchor_coverage(torch.tensor([2480.0]), torch.tensor([10.0]))
    assert float(far[0]) < MIN_ANCHOR_RESPONSE
    enc = AtomEncoder(EncodingConfig())
    table = torch.tensor([[664.6, 31.0, 10.0, -1.0, 0.0, 0.0], [2479.0, 10.0, 30.0, -1.0, 0.0, 0.0]])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        enc.band_features(table, ["red", "swir3"])
        enc.band_features(table, ["red", "swir3"])  # once per band
    msgs = [str(x.message) for x in w if "not covered" in str(x.message)]
    assert len(msgs) == 1 and "swir3" in msgs[0] and "2479 nm" in msgs[0] and "anchors" in msgs[0]
    # with an anchor there, no warning
    wider = EncodingConfig(anchors=(*DEFAULT_ANCHORS, (2480.0, 40.0)))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        AtomEncoder(wider).band_features(table + torch.tensor([[0, 0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0, 0]]), ["r", "s"])
    assert not [x for x in w if "not covered" in str(x.message)]
