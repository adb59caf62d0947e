"""SpectralX-style adapters on a frozen Atomizer, on real EuroSAT tiles: every kind starts as the base, the
backbone stays frozen byte for byte, the attribute router mixes by the band set, one config refuses unknown
kinds, adapters round-trip through a file, and the two stages (masked reconstruction, then the task) run."""

import copy

import pytest
import torch
import yaml

from atomizer.atoms.tokens import collate, tokenize
from atomizer.data.datasets import open_dataset
from atomizer.data.modalities import Modality, simulate
from atomizer.engine.adaptation import AdaptConfig, adapt
from atomizer.engine.evaluation import evaluate_checkpoint
from atomizer.engine.training import TrainConfig, train
from atomizer.models.adapters import (
    KINDS,
    AdapterConfig,
    AdapterError,
    adapter_kind,
    adapter_report,
    apply_adapters,
    attribute_mixtures,
    load_adapters,
    read_adapters,
    save_adapters,
)
from atomizer.models.atomizer import Atomizer, AtomizerConfig
from atomizer.models.checkpoint import read_checkpoint, save_checkpoint

NEW = Modality("new_sensor", 32, 20, ("B8A", "B10"))  # bands no eurosat_train modality contains
RGB = Modality("rgb", 32, 10, ("B02", "B03", "B04"))
ALL = {"kinds": list(KINDS), "max_fraction": 0.3}  # every kind at once (above 5% of the tiny encoder)


@pytest.fixture(scope="module")
def batch():
    """Sets 0, 1: two images through the new sensor; sets 2, 3: the same two images in RGB."""
    ds = open_dataset("eurosat", "test")
    return collate([tokenize(simulate(ds[i]["image"], m)) for m in (NEW, RGB) for i in (0, 9)])


def frozen_tiny(seed: int = 0) -> Atomizer:
    torch.manual_seed(seed)
    model = Atomizer(AtomizerConfig.preset("tiny", num_classes=10)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def test_every_kind_starts_exactly_as_the_base(batch):
    base = frozen_tiny()
    model = copy.deepcopy(base)
    cfg = apply_adapters(model, ALL)
    assert cfg.active == KINDS and cfg.head == "freeze"
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch), base(batch))
        assert torch.equal(model.encode(batch), base.encode(batch))
        assert torch.equal(model(batch, chunk_size=500), base(batch, chunk_size=500))  # streaming path too
        for p in model.parameters():  # and the adapters do act once they are not at their start
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
        assert not torch.allclose(model(batch), base(batch), atol=1e-4)
    rep = adapter_report(model)
    assert all(rep[k] > 0 for k in KINDS) and rep["trainable"] == sum(rep[k] for k in KINDS)


def test_backbone_stays_frozen_through_optimizer_steps(batch):
    model = frozen_tiny()
    apply_adapters(model, ALL)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(adapter_kind(n) is not None for n in trainable)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    model.train()
    target = torch.tensor([0, 1, 2, 3])
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(batch), target).backward()
        opt.step()
    after = model.state_dict()
    base_keys = [k for k in after if adapter_kind(k) is None]
    assert base_keys and all(torch.equal(after[k], before[k]) for k in base_keys)  # byte for byte
    moved = {adapter_kind(k) for k in after if adapter_kind(k) is not None and not torch.equal(after[k], before[k])}
    assert moved == set(KINDS)  # every kind learned


def test_router_mixture_follows_the_band_attributes(batch):
    model = frozen_tiny()
    apply_adapters(model, {"kinds": ["moa"]})
    model.eval()
    mixtures = attribute_mixtures(model, batch)
    assert len(mixtures) == 2  # the first block's and the tied blocks' latent self-attention
    for w in mixtures:
        assert w.shape == (4, 4) and torch.allclose(w.sum(1), torch.ones(4))
        assert torch.equal(w[0], w[1]) and torch.equal(w[2], w[3])  # same sensor, other pixels: same mixture
        assert (w[0] - w[2]).abs().max() > 1e-4  # other bands and GSD: another mixture


def test_one_config_for_every_kind_refuses_unknown_kinds():
    with pytest.raises(AdapterError, match=r"unknown adapter kind\(s\) \['prefix'\]") as e:
        AdapterConfig.from_any({"kinds": ["lora", "prefix"]})
    assert "\n" not in str(e.value)
    with pytest.raises(AdapterError, match="frozen_kinds"):
        AdapterConfig.from_any({"kinds": ["moa"], "frozen_kinds": ["refine"]})
    # the original configs keep their meaning: lora + spectral, or lora alone
    assert AdapterConfig.from_any({}).active == ("lora", "spectral")
    assert AdapterConfig.from_any({"spectral": False}).active == ("lora",)
    assert AdapterConfig.from_any({"kinds": ["ia3"]}).spectral is False
    with pytest.raises(AdapterError, match="limit 5%"):  # the budget still applies
        apply_adapters(frozen_tiny(), {"kinds": list(KINDS)})


def test_adapters_round_trip_through_a_file(batch, tmp_path):
    model = frozen_tiny()
    apply_adapters(model, {**ALL, "frozen_kinds": ["ia3"]})
    with torch.no_grad():
        for n, p in model.named_parameters():
            if adapter_kind(n) is not None:
                p.add_(0.05 * torch.randn_like(p))
    path = save_adapters(model, tmp_path / "adapters.pt")
    stored = read_adapters(path)["state_dict"]
    assert any(".ia3_" in k for k in stored)  # frozen adapters are saved too
    loaded = load_adapters(frozen_tiny(), path)
    assert loaded.adapter_config == model.adapter_config
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))
    with pytest.raises(AdapterError, match="other base weights"):
        load_adapters(frozen_tiny(seed=1), path)


def test_two_stage_adaptation_runs_and_its_checkpoint_evaluates(tmp_path):
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump({"source": {"size_px": 64, "gsd_m": 10}, "modalities": [NEW.to_dict()]}))
    common = dict(dataset="eurosat", epochs=1, batch_size=4, train_limit=8, val_limit=4, device="cpu", seed=1)
    base = train(TrainConfig(**common, max_steps=1, out_dir=str(tmp_path / "base")), progress=False)
    cfg = AdaptConfig(
        base=base["best"],
        adapters={"kinds": ["moa"]},
        stage2_kinds=["refine"],
        freeze_stage1=True,
        pretrain={"steps": 2, "batch_size": 4, "eval_images": 4, "lr": 1e-2},
        train={**common, "max_steps": 2, "lr": 1e-2, "train_modalities": str(new), "test_modalities": str(new)},
        out_dir=str(tmp_path / "adapt"),
    )
    out = adapt(cfg, progress=False)
    first = out["stage1"]
    assert first["step"] == 2 and first["eval_loss_end"] == first["eval_loss_end"]  # finite
    stage1 = read_adapters(first["adapters"])["state_dict"]
    assert stage1 and all(adapter_kind(k) == "moa" for k in stage1)
    assert any(".moa_B" in k and v.abs().sum() > 0 for k, v in stage1.items())  # stage 1 trained them
    best = read_checkpoint(out["best"])
    assert best["extra"]["adapters"]["kinds"] == ["moa", "refine"]
    assert best["extra"]["adapters"]["frozen_kinds"] == ["moa"]
    for k, v in stage1.items():  # stage 2 started from stage 1's mixture and kept it (frozen)
        assert torch.equal(best["state_dict"][k], v)
    base_state = read_checkpoint(base["best"])["state_dict"]
    assert all(torch.equal(best["state_dict"][k], v) for k, v in base_state.items())  # the base, unchanged
    res = evaluate_checkpoint(out["best"], str(new), split="test", device="cpu")
    assert res.sizes["modality"] == 1 and res.attrs["checkpoint"] == out["best"]
    assert 0.0 <= float(res["score"].sel(metric="macro_map").values.ravel()[0]) <= 100.0  # percent
    with pytest.raises(FileExistsError, match="already holds an adaptation"):
        adapt(cfg, progress=False)


def test_adaptation_refuses_a_stage2_over_budget_before_training(tmp_path):
    base = frozen_tiny()
    save_checkpoint(tmp_path / "base.pt", base, {})
    cfg = AdaptConfig(base=str(tmp_path / "base.pt"), adapters={"kinds": ["moa"]}, out_dir=str(tmp_path / "a"))
    with pytest.raises(AdapterError, match="limit 5%"):  # moa + refine both trained: 6% of the tiny encoder
        adapt(cfg, progress=False)
    assert not (tmp_path / "a").exists()  # nothing written
    with pytest.raises(ValueError, match="may not set"):
        AdaptConfig.from_dict({"base": "b.pt", "train": {"out_dir": "x"}})
