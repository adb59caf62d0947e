"""Scaled low-rank adapters (SpectralX's "low-rank scaling") and adapters on a frozen ViT / S2MAE (the
comparison backbones): identity at the start, merged weights, only adapters train, a real adapted run."""

import pytest
import torch
import yaml
from torch import nn

from atomizer.atoms.canvas import canvas_batch
from atomizer.data.datasets import open_dataset
from atomizer.data.modalities import Modality, simulate
from atomizer.engine.training import TrainConfig, train
from atomizer.models.adapters import (
    AdapterError,
    ScaledLowRankLinear,
    adapter_report,
    apply_adapters,
    encoder_fingerprint,
    read_adapters,
)
from atomizer.models.atomizer import Atomizer, AtomizerConfig
from atomizer.models.checkpoint import load_model, read_checkpoint
from atomizer.models.registry import build_model

NEW = Modality("new_sensor", 32, 20, ("B8A", "B10"))  # bands no eurosat_train modality contains


@pytest.fixture(scope="module")
def new_canvas():
    ds = open_dataset("eurosat", "test")
    return canvas_batch([simulate(ds[i]["image"], NEW) for i in (0, 9, 23)], size_px=64)


def test_slr_starts_as_the_base_and_its_merged_weight_is_its_forward():
    torch.manual_seed(0)
    base = nn.Linear(24, 16)
    slr = ScaledLowRankLinear(base, rank=4, alpha=8)
    x = torch.randn(5, 7, 24)
    assert torch.equal(slr(x), base(x)) and torch.equal(slr.weight, base.weight)
    with torch.no_grad():
        slr.slr_B.normal_()
        slr.slr_in.uniform_(0.5, 1.5)
        slr.slr_out.uniform_(0.5, 1.5)
    assert not torch.allclose(slr(x), base(x))
    assert torch.allclose(slr(x), nn.functional.linear(x, slr.weight, slr.bias), atol=1e-5)
    expected = (base(x * slr.slr_in) + 2.0 * (x * slr.slr_in) @ (slr.slr_B @ slr.slr_A).T) * slr.slr_out
    assert torch.allclose(slr(x), expected, atol=1e-5)


def test_slr_on_the_atomizer_trains_only_its_scales_and_low_rank_factors():
    torch.manual_seed(0)
    model = Atomizer(AtomizerConfig.preset("tiny", num_classes=10))
    cfg = apply_adapters(model, {"kinds": ["slr", "spectral"], "rank": 2})
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".slr_" in k or k.startswith("encoder.mlp.") for k in trainable)
    assert {k.rsplit(".", 1)[1] for k in trainable if ".slr_" in k} == {"slr_in", "slr_out", "slr_A", "slr_B"}
    rep = adapter_report(model)
    assert rep["slr"] > 0 and rep["lora"] == 0 and cfg.head == "freeze"
    both = Atomizer(AtomizerConfig.preset("tiny", num_classes=10))
    apply_adapters(both, {"kinds": ["lora", "slr"], "rank": 1, "targets": ["to_q"]})
    wrapped = [m for m in both.modules() if isinstance(m, ScaledLowRankLinear)]
    assert wrapped and all(type(m.base).__name__ == "LoRALinear" for m in wrapped)  # SLR around LoRA


@pytest.mark.parametrize("name", ["vit", "s2mae"])
@pytest.mark.parametrize("kind", ["lora", "slr", "ia3"])
def test_a_frozen_canvas_transformer_takes_adapters(name, kind, new_canvas):
    torch.manual_seed(0)
    model = build_model(name, "tiny", num_classes=10).eval()
    before = model(new_canvas).detach()
    fingerprint = encoder_fingerprint(model)
    targets = ["to_q", "to_out", "patch_proj"]
    apply_adapters(model, {"kinds": [kind], "targets": targets, "max_fraction": 0.5})
    assert torch.allclose(model(new_canvas), before, atol=1e-5)  # starts as the base
    assert encoder_fingerprint(model) == fingerprint  # the same encoder, named as before
    model.train()
    model(new_canvas).sum().backward()
    for k, p in model.named_parameters():
        is_adapter = f".{kind}_" in k
        assert p.requires_grad == is_adapter, k
        assert (p.grad is not None) == is_adapter, k
    entry = "patch_proj" if name == "vit" else "cube_proj"
    if kind != "ia3":  # the canvas's band entry carries an adapter
        assert any(k.startswith(f"{entry}.{kind}_") for k, _ in model.named_parameters())


@pytest.mark.parametrize("kind", ["spectral", "moa", "refine"])
def test_atom_only_kinds_are_refused_on_a_vit_in_one_line(kind):
    model = build_model("vit", "tiny", num_classes=10)
    with pytest.raises(AdapterError, match="read the atoms' band table") as e:
        apply_adapters(model, {"kinds": [kind]})
    assert "\n" not in str(e.value)
    with pytest.raises(AdapterError, match="canvas model's"):
        apply_adapters(build_model("atomizer", "tiny", num_classes=10), {"targets": ["patch_proj"]})


def test_a_resnet_is_refused_in_one_line():
    with pytest.raises(AdapterError, match="not ResNetBaseline"):
        apply_adapters(build_model("resnet", "tiny", num_classes=10), {"kinds": ["lora"]})


def test_adapting_a_trained_vit_to_new_bands_through_the_loop(tmp_path):
    """A ViT trained on eurosat_train, then LoRA on its attention and patch projection on the new modality:
    the base weights are unchanged, the checkpoint reloads with its adapters, and evaluation runs."""
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump({"source": {"size_px": 64, "gsd_m": 10}, "modalities": [NEW.to_dict()]}))
    common = dict(model="vit", preset="tiny", dataset="eurosat", epochs=1, batch_size=4, train_limit=12,
                  val_limit=4, device="cpu", seed=1)  # fmt: skip
    base = train(TrainConfig(**common, max_steps=2, out_dir=str(tmp_path / "base")), progress=False)
    spec = {"kinds": ["lora"], "targets": ["to_q", "to_out", "patch_proj"], "max_fraction": 0.5}
    adapted = train(
        TrainConfig(**common, max_steps=3, lr=1e-2, init=base["best"], adapters=spec, train_modalities=str(new),
                    test_modalities=str(new), out_dir=str(tmp_path / "ad")),
        progress=False,
    )  # fmt: skip
    b = read_checkpoint(base["best"])["state_dict"]
    a = read_checkpoint(adapted["last"])
    assert a["extra"]["adapters"]["kinds"] == ["lora"] and a["extra"]["adapters"]["head"] == "freeze"
    moved = [k for k, v in a["state_dict"].items() if "lora_B" in k and v.abs().sum() > 0]
    assert moved and any(k.startswith("patch_proj.") for k in moved)  # the adapters trained, the band entry too
    for k, v in a["state_dict"].items():
        if ".lora_" not in k:
            assert torch.equal(v, b[k.replace(".base.", ".")]), k  # every base weight unchanged
    assert read_adapters(adapted["adapters"])["report"]["lora"] > 0
    model = load_model(adapted["best"])
    assert any(".lora_" in k for k, _ in model.named_parameters())
