"""On the GPU: streaming inference (atoms in chunks through each cross-attention) equals one pass, and a
strip of a map classified on the GPU equals the CPU's within bf16 tolerance."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from gpu_support import GPU, small, test_device

from atomizer.atoms.tokens import AtomBatch, collate, tokenize
from atomizer.data.modalities import Modality, simulate
from atomizer.data.readers import image_bands, open_image
from atomizer.models.registry import build_model

pytestmark = GPU


def _tiny(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("atomizer", "tiny", num_classes=19).to(device).eval()


@torch.no_grad()
def test_streaming_inference_equals_one_pass(ben_patch_paths):
    device = test_device()
    model = _tiny(device)
    patch = open_image(ben_patch_paths[0])
    # on CUDA the native patch (80,000 atoms); in the CPU dry run 5 bands at 20 m (18,000)
    big = simulate(patch, Modality("s", 60, 20, ("B02", "B03", "B04", "B08", "B11"))) if small() else patch
    atoms = collate([tokenize(big), tokenize(simulate(patch, Modality("m", 24, 50, ("B02", "B04", "B08"))))])
    atoms = atoms.to(device)  # two sets of different sizes, padded
    one = model(atoms)
    for chunk in (7_000, 30_000):
        torch.testing.assert_close(model(atoms, chunk_size=chunk), one, rtol=1e-3, atol=1e-3)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        one16 = model(atoms).float()
        chunked16 = model(atoms, chunk_size=7_000).float()
    torch.testing.assert_close(chunked16, one16, rtol=0, atol=5e-2)  # bf16: chunk sums round differently
    torch.testing.assert_close(one16, one.float(), rtol=0, atol=1e-1)


def test_map_strip_on_the_device_equals_the_cpu_strip(ben_patch_paths):
    """A row of 600 m windows over a real BigEarthNet patch (the map's own windowing, no GeoTIFF needed)."""
    from atomizer.engine import mapping

    device = test_device()
    image = open_image(ben_patch_paths[0], lazy=True)
    grid = mapping.scene_grid(image, 600, 300)
    modality = Modality("map_window", grid.window_px, grid.gsd_m, tuple(image_bands(image)))
    cpu_model, dev_model = _tiny(torch.device("cpu")), _tiny(device)
    for y0 in grid.ys:
        ref, placed = mapping._classify_row(image, modality, grid, y0, AtomBatch, None, cpu_model, 2, True, "cpu")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            got, placed_dev = mapping._classify_row(
                image, modality, grid, y0, AtomBatch, None, dev_model, 2, True, str(device)
            )
        assert placed_dev == placed == list(grid.xs)
        np.testing.assert_allclose(np.stack(got), np.stack(ref), atol=2e-2)  # sigmoid probabilities


@pytest.mark.skipif(importlib.util.find_spec("rasterio") is None, reason="rasterio missing (GeoTIFF scene and map)")
def test_predict_map_on_the_device_equals_the_cpu_map(tiny_run, majortom_product_dir, tmp_path):
    """``predict_map`` of the session's tiny run over a real 1,280 m scene crop, on the device and on the CPU
    (skipped before the tiny run is trained where rasterio is missing: EuroSAT and the scene are GeoTIFFs)."""
    import rasterio

    from atomizer.engine.mapping import MAP_NODATA, predict_map
    from tests.data import product_fixtures as fx

    device = test_device()
    scene = tmp_path / "S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419"
    for band in fx.NATIVE:
        data, prof = fx.crop(majortom_product_dir, band, extent_m=1280)
        fx.write_raster(scene / f"{band}.tif", data, prof)
    ckpt = tiny_run / "checkpoints" / "best.pt"
    maps = {}
    for name, dev in (("cpu", "cpu"), ("device", str(device))):
        out = tmp_path / f"{name}.tif"
        predict_map(ckpt, scene, out, stride_m=320, device=dev, progress=False)
        with rasterio.open(out) as m:
            maps[name] = m.read()
    cpu, dev_map = maps["cpu"], maps["device"]
    valid = cpu[-1] != MAP_NODATA
    assert valid.mean() > 0.95 and np.array_equal(valid, dev_map[-1] != MAP_NODATA)
    np.testing.assert_allclose(dev_map[:-1, valid], cpu[:-1, valid], atol=2e-2)
    assert (dev_map[-1, valid] == cpu[-1, valid]).mean() > 0.95  # near-ties may flip
