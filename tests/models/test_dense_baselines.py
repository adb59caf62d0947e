"""Dense (segmentation) heads of the canvas baselines (:mod:`atomizer.models.baselines`) on real TerraMesh tiles.

Every baseline built with ``task="segmentation"`` answers ``model(batch, queries=DenseQueries)`` with per-pixel
logits (S, Q, K), its canvas-resolution output read at the query centres over the canvas extent
(``CanvasBatch.extent_m``); built as a classifier (the default) it is exactly the model it was before the
dense heads (parameters, state-dict layout and outputs recorded from that code).
"""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F
import yaml

from atomizer.atoms.canvas import CANVAS_BANDS, CanvasBatch, CanvasSpec, canvas_batch
from atomizer.atoms.dense import DenseQueries, grid_size
from atomizer.core.config import ConfigError
from atomizer.data.modalities import Modality, load_modalities, simulate
from atomizer.data.readers import open_image
from atomizer.engine.loaders import model_input
from atomizer.models.baselines import CONFIGS
from atomizer.models.registry import build_from_config, build_model
from tests.conftest import EMBEDDED

TERRAMESH = EMBEDDED / "dense" / "terramesh"
MODELS = ("resnet", "vit", "scalemae", "perceiver")
K = 9  # the TerraMesh land-cover classes
#: The dense tests' canvas: 64 px at 20 m (1,280 m), small enough for a few-second CPU test.
CANVAS = CanvasSpec(64, 20.0)
#: The two windows on it: a full-canvas window (64 px at 20 m, 1,280 m, every band) and a smaller one
#: (48 px at 20 m, 960 m, four bands) that the canvas centres in a zero frame.
WINDOWS = (Modality("full", 64, 20.0, CANVAS_BANDS), Modality("inner", 48, 20.0, ("B02", "B03", "B04", "B08")))
OUTPUT_GSDS = (5.0, 10.0, 20.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiles():
    """Two real TerraMesh Sentinel-2 L2A tiles (224 px at 10 m), read with their card's band order."""
    card = yaml.safe_load((TERRAMESH / "manifest.yaml").read_text())
    bands = list(card["bands"]["s2l2a"])
    return [
        open_image(TERRAMESH / "images" / f"{i}_s2l2a.tif", sensor=card["sensor"]["s2l2a"], band_names=bands)
        for i in ("282D_485L_3_3", "38D_378R_2_3")
    ]


def windows_batch(tiles, windows, canvas: CanvasSpec) -> CanvasBatch:
    """Each tile simulated under its window modality, laid on ``canvas`` and collated, as the loaders do
    (:func:`atomizer.engine.loaders.model_input`)."""
    return CanvasBatch.collate([model_input(simulate(t, m), CanvasBatch, canvas) for t, m in zip(tiles, windows)])


@pytest.fixture(scope="module")
def batch(tiles) -> CanvasBatch:
    return windows_batch(tiles, WINDOWS, CANVAS)


def queries_at(gsd_m: float) -> DenseQueries:
    """The output pixels of the two windows at ``gsd_m``."""
    return DenseQueries.grids([grid_size(m.size_px * m.gsd_m, gsd_m) for m in WINDOWS], gsd_m)


def segmenter(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(arch, "tiny", num_classes=K, task="segmentation")


def test_canvas_batch_carries_its_extent(tiles, batch):
    assert batch.extent_m == CANVAS.size_px * CANVAS.gsd_m == 1280.0
    assert batch.to("cpu").extent_m == 1280.0 and batch.num_sets == 2
    other = windows_batch(tiles[:1], WINDOWS[:1], CanvasSpec(64, 10.0))
    assert other.extent_m == 640.0
    with pytest.raises(ValueError, match="different extents"):
        CanvasBatch.collate([batch, other])
    assert canvas_batch(tiles[:1], size_px=32, gsd_m=30.0).extent_m == 960.0


@pytest.mark.parametrize("arch", MODELS)
def test_segmentation_answers_three_output_gsds(arch, batch):
    model = segmenter(arch)
    classifier = build_model(arch, "tiny", num_classes=K)
    seg_state, cls_state = model.state_dict(), classifier.state_dict()
    head = [k for k in cls_state if k not in seg_state]
    decoder = [k for k in seg_state if k not in cls_state]
    # the encoder is the classifier's, tensor for tensor; only the head is replaced by the dense decoder
    assert all(seg_state[k].shape == cls_state[k].shape for k in cls_state if k in seg_state)
    assert head and decoder and all(k.split(".")[0] in ("fc", "head") for k in head)
    params = dict(model.named_parameters())
    n_decoder = sum(p.numel() for n, p in params.items() if n not in cls_state)
    n_head = sum(p.numel() for n, p in classifier.named_parameters() if n not in seg_state)
    assert model.num_parameters() == classifier.num_parameters() - n_head + n_decoder
    print(
        f"\n{arch} tiny: classifier {classifier.num_parameters():,} params, segmenter {model.num_parameters():,}"
        f" (decoder {n_decoder:,}, replacing a head of {n_head:,})"
    )

    for gsd in OUTPUT_GSDS:
        q = queries_at(gsd)
        out = model(batch, queries=q)
        n_full, n_inner = (grid_size(m.size_px * m.gsd_m, gsd) for m in WINDOWS)
        assert out.shape == (2, n_full**2, K) and q.x.shape[1] == n_full**2
        assert int(q.valid[1].sum()) == n_inner**2
        assert bool(torch.isfinite(out).all())
        if gsd != 10.0:
            continue
        target = torch.randint(0, K, q.valid.shape, generator=torch.Generator().manual_seed(1))
        loss = F.cross_entropy(out[q.valid], target[q.valid])
        loss.backward()
    missing = [n for n, p in params.items() if p.grad is None]
    assert not missing, f"parameters without a gradient (unused by the dense path): {missing}"
    assert all(bool(torch.isfinite(p.grad).all()) for p in params.values() if p.grad is not None)
    first = {"resnet": "stem.0.weight", "vit": "patch_proj.weight", "scalemae": "patch_proj.weight"}
    encoder_first = params[first.get(arch, "latents")]
    decoder_last = params[
        {"resnet": "classifier.weight", "perceiver": "pixel_head.1.weight"}.get(arch, "decoder.classifier.weight")
    ]
    assert float(encoder_first.grad.abs().sum()) > 0 and float(decoder_last.grad.abs().sum()) > 0


@pytest.mark.parametrize("arch", MODELS)
def test_dense_output_is_read_where_the_queries_are(arch, batch):
    """Queries on the canvas's own grid read the canvas-resolution output exactly: the full window is the
    whole field, the inner window (960 m, centred) its central 48 x 48 pixels."""
    model = segmenter(arch).eval()
    with torch.no_grad():
        field = model.dense(batch)  # (S, K, 64, 64)
        out = model(batch, queries=queries_at(CANVAS.gsd_m))
    assert field.shape == (2, K, 64, 64)
    torch.testing.assert_close(out[0], field[0].flatten(1).T, rtol=0, atol=1e-5)
    inner = field[1, :, 8:56, 8:56].flatten(1).T  # rows north to south, columns west to east
    torch.testing.assert_close(out[1, : 48 * 48], inner, rtol=0, atol=1e-5)
    # a finer output grid reads between the canvas pixels: 5 m answers stay within the 20 m field's range
    fine = model(batch, queries=queries_at(5.0)).detach()
    assert float(fine[0].min()) >= float(field[0].min()) - 1e-5
    assert float(fine[0].max()) <= float(field[0].max()) + 1e-5


def test_segmentation_on_the_terramesh_protocol_canvas(tiles):
    """The canvas the TerraMesh modality sets prescribe (224 px at 10 m), a training modality (tr1: 112 px
    at 20 m, five bands): ResNet U-Net answers at 5, 10 and 20 m over the 2,240 m window."""
    spec = CanvasSpec.of(load_modalities("terramesh_train"))
    tr1 = load_modalities("terramesh_train")[0]
    b = windows_batch(tiles[:1], [tr1], spec)
    assert b.extent_m == 2240.0 and b.pixels.shape == (1, 12, 224, 224)
    model = segmenter("resnet").eval()
    with torch.no_grad():
        for gsd, n in ((5.0, 448), (10.0, 224), (20.0, 112)):
            out = model(b, queries=DenseQueries.grids([grid_size(tr1.size_px * tr1.gsd_m, gsd)], gsd))
            assert out.shape == (1, n * n, K) and bool(torch.isfinite(out).all())


#: Recorded from the baselines before the dense heads existed (tiny presets, ``torch.manual_seed(0)``, 9
#: classes, :func:`reference_batch`): parameter count, a signature of the state dict's names and shapes, logits.
BEFORE = {
    "resnet": (
        79273,
        "2c0b2037663e817b",
        [
            [0.087623, -0.123416, -0.078348, 0.122634, 0.016368, 0.127676, -0.114183, -0.062873, 0.017105],
            [0.098558, -0.120003, -0.066415, 0.111759, 0.022062, 0.122469, -0.108379, -0.072627, 0.023641],
        ],
    ),  # noqa: E501
    "vit": (
        134793,
        "76561b70b8b67761",
        [
            [-0.100533, -0.540084, -0.711864, 0.317375, 0.448151, 0.057452, -0.102501, 0.171944, 0.102443],
            [0.315645, -0.580225, -1.0206, 0.483936, 0.013732, 0.749252, -0.023457, -0.32235, 0.849429],
        ],
    ),  # noqa: E501
    "scalemae": (
        134793,
        "76561b70b8b67761",
        [
            [-0.100533, -0.540084, -0.711864, 0.317375, 0.448151, 0.057452, -0.102501, 0.171944, 0.102443],
            [0.303178, -0.477848, -0.990032, 0.596545, -0.089902, 0.728625, -0.054143, -0.262296, 0.864615],
        ],
    ),  # noqa: E501
    "perceiver": (
        133833,
        "c02e3c892e5106de",
        [
            [0.168711, 0.484132, 0.591058, -0.587799, 0.071653, -0.384563, 0.701765, -0.180591, 0.448889],
            [0.268819, 0.508782, 0.54995, -0.481126, 0.086641, -0.251201, 0.811193, -0.444522, 0.412858],
        ],
    ),  # noqa: E501
}


def reference_batch(tiles) -> CanvasBatch:
    """Tile 1 at 64 px / 10 m with every band, tile 2 at 32 px / 20 m with B02-B04, on a 64 px / 10 m canvas."""
    bands = tuple(tiles[0].data_vars)
    mods = [Modality("a", 64, 10.0, bands), Modality("b", 32, 20.0, bands[1:4])]
    return CanvasBatch.collate(
        [model_input(simulate(t, m), CanvasBatch, CanvasSpec(64, 10.0)) for t, m in zip(tiles, mods)]
    )


@pytest.mark.parametrize("arch", MODELS)
def test_classification_is_unchanged(arch, tiles):
    b = reference_batch(tiles)
    torch.manual_seed(0)
    model = build_model(arch, "tiny", num_classes=K).eval()
    assert model.cfg.task == "classification"
    signature = ";".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    with torch.no_grad():
        out = model(b)
    n, sig, logits = BEFORE[arch]
    assert model.num_parameters() == n
    assert hashlib.sha256(signature.encode()).hexdigest()[:16] == sig
    torch.testing.assert_close(out, torch.tensor(logits), rtol=0, atol=2e-5)
    with pytest.raises(ValueError, match="classifier"):
        model(b, queries=DenseQueries.grids([64, 64], 10.0))


def test_segmentation_refuses_bad_calls_and_configs(batch):
    model = segmenter("resnet")
    with pytest.raises(ValueError, match="queries=DenseQueries"):
        model(batch)
    with pytest.raises(ValueError, match="extent_m"):
        model(CanvasBatch(batch.pixels, batch.gsd, batch.present), queries=queries_at(10.0))
    with pytest.raises(ValueError, match="3 query sets for a batch of 2"):
        model(batch, queries=DenseQueries.grids([8, 8, 8], 10.0))
    with pytest.raises(ConfigError, match="task must be one of classification, segmentation"):
        CONFIGS["vit"].preset("tiny", task="detection")
    with pytest.raises(ValueError, match="built for segmentation"):
        model.classify(batch)


@pytest.mark.parametrize("arch", MODELS)
def test_segmentation_config_round_trips(arch):
    model = segmenter(arch)
    stored = model.cfg.to_dict()
    assert stored["task"] == "segmentation"
    rebuilt = build_from_config(arch, stored)
    assert rebuilt.cfg == model.cfg
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch", MODELS)
@pytest.mark.parametrize("preset", ["tiny", "small", "paper"])
def test_configs_stored_before_dense_heads_read_as_the_same_classifier(arch, preset):
    """A checkpoint's config written before ``task`` / ``decoder_width`` existed reads back as today's preset
    (the new fields take their defaults), so ``load_into``'s strict config comparison still accepts it."""
    today = CONFIGS[arch].preset(preset)
    old = {k: v for k, v in today.to_dict().items() if k not in ("task", "decoder_width")}
    assert len(old) < len(today.to_dict())
    assert CONFIGS[arch].from_dict(old) == today and today.task == "classification"
