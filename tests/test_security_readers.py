"""Attacks on the readers (issue 23), each asserting that it FAILS: a raster that is really a VRT pointing at a
URL or at a file elsewhere, STAC hrefs leaving the item's folder or pointing at a URL, URL and /vsi input paths,
and an input above the atom limit (refused from its header, before any pixel is read).

These tests write hostile files on purpose (under tmp_path only): VRT XML named ``B04.tif``, STAC items whose
hrefs point at a local HTTP listener or outside their folder. The listener is bound to 127.0.0.1 in a thread
and records every request it receives; the attacks must send none.
"""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.io import MemoryFile
from rasterio.transform import from_origin

from atomizer.cli import main
from atomizer.core.limits import InputTooLargeError
from atomizer.data.readers import ImageReadError, open_image, read_stac_item


class _ReadersListener:
    """An HTTP server on 127.0.0.1 (ephemeral port) in a daemon thread, recording each request's path."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        seen = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                seen.append(f"GET {self.path}")
                self.send_response(404)
                self.end_headers()

            def do_HEAD(self) -> None:  # noqa: N802
                seen.append(f"HEAD {self.path}")
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def readers_listener():
    listener = _ReadersListener()
    yield listener
    listener.close()


def _readers_geotiff(path: Path, size: int = 16, count: int = 1) -> Path:
    """A real single- or multi-band GeoTIFF (UTM 33N, 10 m) of distinct uint16 values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (np.arange(count * size * size, dtype=np.uint16) % 5000 + 1).reshape(count, size, size)
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=count, dtype="uint16", crs="EPSG:32633",
        transform=from_origin(500000, 5300000, 10, 10),
    ) as dst:  # fmt: skip
        dst.write(data)
    return path


def _readers_vrt(source: str, size: int = 16) -> str:
    """A VRT whose one band reads ``source`` (a /vsicurl/ URL or a local file): hostile when named ``.tif``."""
    return (
        f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><VRTRasterBand dataType="UInt16" band="1">'
        f'<SimpleSource><SourceFilename relativeToVRT="0">{source}</SourceFilename><SourceBand>1</SourceBand>'
        "</SimpleSource></VRTRasterBand></VRTDataset>"
    )


def _readers_one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("atomizer: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


def _readers_stac_item(folder: Path, href: str) -> Path:
    """A STAC item (eo:bands given, no sidecar needed) whose one data asset ``B04`` points at ``href``."""
    folder.mkdir(parents=True, exist_ok=True)
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
        "id": "hostile_item",
        "geometry": None,
        "properties": {"datetime": "2022-07-06T08:56:11Z"},
        "links": [],
        "assets": {
            "B04": {
                "href": href,
                "type": "image/tiff; application=geotiff",
                "roles": ["data"],
                "eo:bands": [{"name": "B04", "center_wavelength": 0.665, "full_width_half_max": 0.031}],
            }
        },
    }
    path = folder / "item.json"
    path.write_text(json.dumps(item))
    return path


# --------------------------------------------------------------------------------------------------
# GDAL drivers: a file is read as what its name says, and GDAL's network is off
# --------------------------------------------------------------------------------------------------


def test_vrt_named_tif_pointing_at_a_url_sends_no_request(tmp_path, readers_listener, capsys):
    """Hostile file: ``B04.tif`` holding a VRT whose source is ``/vsicurl/`` on the local listener."""
    folder = tmp_path / "scene"
    folder.mkdir()
    (folder / "B04.tif").write_text(_readers_vrt(f"/vsicurl/{readers_listener.url('x.tif')}"))
    assert main(["inspect", str(folder)]) == 2
    err = _readers_one_line_error(capsys)
    assert "B04.tif" in err and "not a readable GeoTIFF" in err
    assert readers_listener.requests == []


def test_vrt_named_tif_pointing_at_a_local_file_elsewhere_is_refused(tmp_path, capsys):
    """Hostile file: ``B04.tif`` holding a VRT that reads a (real) GeoTIFF outside the folder."""
    outside = _readers_geotiff(tmp_path / "elsewhere" / "secret.tif")
    folder = tmp_path / "scene"
    folder.mkdir()
    (folder / "B04.tif").write_text(_readers_vrt(str(outside.resolve())))
    assert main(["inspect", str(folder)]) == 2
    assert "not a readable GeoTIFF" in _readers_one_line_error(capsys)
    with pytest.raises(ImageReadError, match="B04.tif: not a readable GeoTIFF"):
        open_image(folder)
    # the real GeoTIFF itself still reads, in the same layout
    shutil.copy(outside, folder / "B04.tif")
    assert open_image(folder)["B04"].shape == (16, 16)


def test_url_and_vsi_input_paths_are_refused_and_send_no_request(tmp_path, readers_listener, capsys):
    for path in (readers_listener.url("x.tif"), f"/vsicurl/{readers_listener.url('y.tif')}"):
        assert main(["inspect", path, "--sensor", "sentinel2"]) == 2
        assert "allow_remote=True" in _readers_one_line_error(capsys)
        with pytest.raises(ImageReadError, match="URL or GDAL virtual path"):
            open_image(path, sensor="sentinel2")
    assert readers_listener.requests == []


def test_vsi_input_path_reads_when_allowed_explicitly(tmp_path):
    """The opt-in works: a GDAL virtual path (an in-memory GeoTIFF) reads with ``allow_remote=True``."""
    src = _readers_geotiff(tmp_path / "img.tif", count=13)
    with MemoryFile(src.read_bytes(), filename="img.tif") as mem:
        with pytest.raises(ImageReadError, match="allow_remote"):
            open_image(mem.name, sensor="sentinel2")
        ds = open_image(mem.name, sensor="sentinel2", allow_remote=True)
        assert ds["B04"].shape == (16, 16) and int(ds["B01"].values[0, 0]) == 1


# --------------------------------------------------------------------------------------------------
# STAC hrefs stay inside the item's folder
# --------------------------------------------------------------------------------------------------


def test_stac_href_to_a_url_sends_no_request(tmp_path, readers_listener, capsys):
    """Hostile file: a STAC item whose asset href is the local listener's URL."""
    item = _readers_stac_item(tmp_path / "stac", readers_listener.url("B04.tif"))
    assert main(["inspect", str(item)]) == 2
    err = _readers_one_line_error(capsys)
    assert "asset 'B04'" in err and "allow_remote=True" in err
    with pytest.raises(ImageReadError, match="asset 'B04'"):
        read_stac_item(item)
    assert readers_listener.requests == []


@pytest.mark.parametrize("escape", ["../outside/B04.tif", "absolute", "/vsicurl/"])
def test_stac_href_outside_the_item_folder_is_refused(tmp_path, readers_listener, capsys, escape):
    """Hostile file: a STAC item whose asset href leaves its folder (``../``, an absolute path, a /vsi path)
    to a real GeoTIFF; refused unless the caller opts out explicitly."""
    outside = _readers_geotiff(tmp_path / "outside" / "B04.tif")
    href = {
        "../outside/B04.tif": "../outside/B04.tif",
        "absolute": str(outside.resolve()),
        "/vsicurl/": f"/vsicurl/{readers_listener.url('B04.tif')}",
    }[escape]
    item = _readers_stac_item(tmp_path / "stac", href)
    assert main(["inspect", str(item)]) == 2
    err = _readers_one_line_error(capsys)
    assert "asset 'B04'" in err and ("outside the item's folder" in err or "GDAL virtual path" in err)
    assert readers_listener.requests == []
    if escape != "/vsicurl/":  # explicit opt-out: the file outside is read
        ds = read_stac_item(item, allow_outside=True)
        assert ds["B04"].shape == (16, 16)
        assert open_image(item, allow_outside=True)["B04"].shape == (16, 16)


def test_stac_href_through_a_link_leading_out_is_refused(tmp_path):
    """Hostile layout: the asset is a symbolic link in the item's folder to a GeoTIFF elsewhere."""
    outside = _readers_geotiff(tmp_path / "outside" / "B04.tif")
    item = _readers_stac_item(tmp_path / "stac", "./B04.tif")
    (item.parent / "B04.tif").symlink_to(outside)
    with pytest.raises(ImageReadError, match="outside the item's folder"):
        read_stac_item(item)


def test_landsat_mtl_file_name_leading_out_of_the_product_is_refused(tmp_path, majortom_product_dir):
    """Hostile file: a Landsat MTL whose band file name is a ``../`` path to a (real) GeoTIFF elsewhere."""
    from tests.data import product_fixtures as fx

    folder = fx.build_landsat(majortom_product_dir, tmp_path, fmt="txt")
    mtl = next(folder.glob("*_MTL.txt"))
    name = next(f.name for f in folder.glob("*_SR_B4.TIF"))
    _readers_geotiff(tmp_path / "elsewhere" / name)
    mtl.write_text(mtl.read_text().replace(f'"{name}"', f'"../elsewhere/{name}"'))
    with pytest.raises(ImageReadError, match="outside the product folder"):
        open_image(folder)


# --------------------------------------------------------------------------------------------------
# Inputs above the atom limit are refused from their header, before any pixel is read
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def readers_tiny_checkpoint(tmp_path_factory):
    from atomizer.engine.training import TrainConfig, train

    out = tmp_path_factory.mktemp("readers") / "run"
    cfg = TrainConfig(
        model="atomizer",
        preset="tiny",
        dataset="eurosat",
        epochs=1,
        max_steps=1,
        batch_size=4,
        train_limit=4,
        val_limit=4,
        device="cpu",
        out_dir=str(out),
    )
    train(cfg, progress=False)
    return out / "checkpoints" / "best.pt"


def _readers_truncated_after_header(src: Path, dst: Path) -> Path:
    """A copy of the real GeoTIFF ``src`` cut where its first pixel block begins: the header (size, bands,
    georeferencing) is whole, every pixel is gone, so reading any pixel fails."""
    with rasterio.open(src) as s:
        first = min(int(s.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=b)) for b in range(1, s.count + 1))
    dst.write_bytes(src.read_bytes()[:first])
    return dst


def test_predict_above_the_atom_limit_is_refused_before_reading(
    tmp_path, eurosat_paths, readers_tiny_checkpoint, monkeypatch, capsys
):
    real = tmp_path / "eurosat.tif"
    with rasterio.open(eurosat_paths[0]) as s:  # a real EuroSAT image, rewritten uncompressed in strips
        profile = {**s.profile, "compress": None, "tiled": False}
        data = s.read()
    with rasterio.open(real, "w", **profile) as d:
        d.write(data)
    n_atoms = data.size  # 13 bands x 64 x 64
    cut = _readers_truncated_after_header(real, tmp_path / "cut.tif")
    # without a limit in the way, the cut file fails when its pixels are read
    with pytest.raises(ImageReadError):
        open_image(cut).load()
    monkeypatch.setenv("ATOMIZER_MAX_ATOMS", str(n_atoms - 1))
    from atomizer.engine.inference import predict_image

    for path in (real, cut):  # the cut file gets the limit's error: no pixel was read to reach it
        with pytest.raises(InputTooLargeError, match=f"holds {n_atoms:,} atoms, above the limit of {n_atoms - 1:,}"):
            predict_image(readers_tiny_checkpoint, path)
    assert main(["predict", str(readers_tiny_checkpoint), str(cut)]) == 2
    err = _readers_one_line_error(capsys)
    assert f"{n_atoms:,} atoms" in err and f"limit of {n_atoms - 1:,}" in err
    monkeypatch.setenv("ATOMIZER_MAX_ATOMS", str(n_atoms))  # at the limit: read and predicted
    probs = predict_image(readers_tiny_checkpoint, real)
    assert len(probs) == 10 and all(0.0 <= p <= 1.0 for p in probs.values())


def test_npz_above_the_atom_limit_is_refused_from_its_headers(
    tmp_path, ben_patch_paths, readers_tiny_checkpoint, monkeypatch
):
    """Hostile file: an npz whose arrays' headers are whole but whose data is cut (reading it would fail)."""
    import zipfile

    with np.load(ben_patch_paths[0]) as z:
        arrays = {k: z[k] for k in z.files}
    n_atoms = sum(int(v.size) for k, v in arrays.items() if v.ndim == 2 and k.startswith("B"))
    cut = tmp_path / "cut.npz"
    with zipfile.ZipFile(cut, "w") as out:  # stored members: each .npy header, then no data
        for k, v in arrays.items():
            full = tmp_path / f"{k}.npy"
            np.save(full, v)
            raw = full.read_bytes()
            header = raw[: len(raw) - v.nbytes] if v.ndim == 2 else raw
            out.writestr(f"{k}.npy", header)
    with pytest.raises(ImageReadError):
        open_image(cut)
    monkeypatch.setenv("ATOMIZER_MAX_ATOMS", str(n_atoms - 1))
    from atomizer.engine.inference import predict_image

    with pytest.raises(InputTooLargeError, match=f"holds {n_atoms:,} atoms"):
        predict_image(readers_tiny_checkpoint, cut)
