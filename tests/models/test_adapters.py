"""Adapters: LoRA starts as the identity, the budget holds, the base stays frozen through training, and
adapters saved apart from the base reload to exactly the same outputs (and refuse another base)."""

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from atomizer.atoms.tokens import collate, tokenize
from atomizer.data.datasets import open_dataset
from atomizer.data.modalities import Modality, simulate
from atomizer.engine.training import TrainConfig, train
from atomizer.models.adapters import (
    AdapterConfig,
    AdapterError,
    LoRALinear,
    adapter_report,
    apply_adapters,
    load_adapters,
    read_adapters,
    save_adapters,
)
from atomizer.models.atomizer import Atomizer, AtomizerConfig
from atomizer.models.checkpoint import load_model, read_checkpoint

NEW = Modality("new_sensor", 32, 20, ("B8A", "B10"))  # bands no eurosat_train modality contains


@pytest.fixture(scope="module")
def new_batch():
    ds = open_dataset("eurosat", "test")
    return collate([tokenize(simulate(ds[i]["image"], NEW)) for i in (0, 9, 23)])


def tiny(num_classes=10, seed=0) -> Atomizer:
    torch.manual_seed(seed)
    return Atomizer(AtomizerConfig.preset("tiny", num_classes=num_classes)).eval()


def frozen(model: Atomizer) -> Atomizer:
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def test_lora_linear_with_zero_b_is_exactly_the_base():
    base = nn.Linear(24, 16)
    lora = LoRALinear(base, rank=4, alpha=8)
    x = torch.randn(5, 7, 24)
    assert torch.equal(lora(x), base(x)) and torch.equal(lora.weight, base.weight)
    with torch.no_grad():
        lora.lora_B.normal_()
    delta = 2.0 * lora.lora_B @ lora.lora_A
    assert torch.allclose(lora(x), base(x) + x @ delta.T, atol=1e-5)
    assert torch.allclose(lora.weight, base.weight + delta)


def test_adapted_model_starts_with_the_base_outputs(new_batch):
    base = frozen(tiny())
    model = frozen(tiny())
    apply_adapters(model, {"targets": ["to_q", "to_kv", "to_out", "token_proj"], "rank": 2})
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(new_batch), base(new_batch))
        assert torch.equal(model(new_batch, chunk_size=700), base(new_batch, chunk_size=700))
        assert torch.equal(
            model.encoder.band_features(new_batch.band_table), base.encoder.band_features(new_batch.band_table)
        )
    # and the adapters do act once they are non-zero (the test can fail)
    with torch.no_grad():
        model.encoder.mlp[2].weight.normal_()
        assert not torch.allclose(model(new_batch), base(new_batch), atol=1e-4)


def test_trainable_fraction_within_budget_and_refused_above():
    model = tiny()
    cfg = apply_adapters(model, {})
    rep = adapter_report(model)
    assert cfg.head == "freeze" and rep["head"] == 0
    assert rep["trainable"] == rep["lora"] + rep["spectral"] > 0
    assert rep["encoder"] == sum(p.numel() for n, p in tiny().named_parameters() if not n.startswith("head."))
    assert rep["fraction"] <= 0.05
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("encoder.mlp.") for n in trainable)
    # tied blocks share one adapter (depth 2 with tie_weights: blocks 1.. are one module)
    assert model.blocks[1].cross.attn.to_q is model.blocks[-1].cross.attn.to_q
    with pytest.raises(AdapterError, match="limit 5%"):
        apply_adapters(tiny(), {"rank": 16, "targets": ["to_q", "to_kv", "to_out", "token_proj"]})
    with pytest.raises(AdapterError, match="already"):
        apply_adapters(model, {})
    with pytest.raises(AdapterError, match="unknown"):
        AdapterConfig.from_any({"ranks": 3})


def test_new_label_set_gets_a_new_trainable_fc(new_batch):
    model = tiny()
    cfg = apply_adapters(model, {"num_classes": 3, "head": "auto"})
    assert cfg.head == "fc" and model.cfg.num_classes == 3
    with torch.no_grad():
        assert model(new_batch).shape == (3, 3)
    assert model.head.fc.weight.requires_grad and not model.head.attn.to_q.weight.requires_grad
    assert adapter_report(model)["fraction"] <= 0.05
    with pytest.raises(AdapterError, match="new label set"):
        apply_adapters(tiny(), {"num_classes": 3, "head": "freeze"})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A base trained on eurosat_train, then adapters only on the new modality through the training loop."""
    root = tmp_path_factory.mktemp("adapt")
    new = root / "new.yaml"
    new.write_text(yaml.safe_dump({"source": {"size_px": 64, "gsd_m": 10}, "modalities": [NEW.to_dict()]}))
    common = dict(
        model="atomizer",
        preset="tiny",
        dataset="eurosat",
        epochs=1,
        batch_size=4,
        train_limit=12,
        val_limit=4,
        device="cpu",
        seed=1,
    )
    base = train(TrainConfig(**common, max_steps=2, out_dir=str(root / "base")), progress=False)
    adapted = train(
        TrainConfig(
            **common,
            max_steps=3,
            lr=1e-2,
            init=base["best"],
            adapters={"rank": 4},
            train_modalities=str(new),
            test_modalities=str(new),
            out_dir=str(root / "ad"),
        ),
        progress=False,
    )
    return base, adapted


def test_adapter_training_leaves_the_base_weights_unchanged(runs):
    base, adapted = runs
    b = read_checkpoint(base["best"])["state_dict"]
    a = read_checkpoint(adapted["last"])
    assert a["extra"]["adapters"]["head"] == "freeze"  # same label set: the base head came along
    changed = []
    for k, v in a["state_dict"].items():
        if ".lora_" in k or k.startswith("encoder.mlp."):
            changed.append(not torch.equal(v, torch.zeros_like(v)) if "lora_B" in k else True)
            continue
        assert torch.equal(v, b[k.replace(".base.", ".")]), k  # every base weight (and the head) unchanged
    assert changed and all(changed)  # the adapters did train (lora_B left zero)
    rep = adapted["trainable_parameters"]
    assert 0 < rep["trainable"] <= 0.05 * rep["encoder"]


def test_saved_adapters_reload_to_identical_outputs(runs, new_batch, tmp_path):
    base, adapted = runs
    payload = read_adapters(adapted["adapters"])
    assert set(payload["state_dict"]) == {
        k for k in payload["state_dict"] if ".lora_" in k or k.startswith("encoder.mlp.")
    }
    assert payload["base_checkpoint"] == base["best"] and len(payload["base_fingerprint"]) == 64
    full = load_model(adapted["best"])  # the run's own checkpoint (base + adapters)
    again = load_adapters(load_model(base["best"]), adapted["adapters"]).eval()
    with torch.no_grad():
        assert torch.equal(full(new_batch), again(new_batch))
        assert not torch.allclose(full(new_batch), load_model(base["best"])(new_batch))
    # save -> load round trip of an in-memory model
    path = save_adapters(again, tmp_path / "a.pt", base_checkpoint=base["best"])
    third = load_adapters(load_model(base["best"]), path).eval()
    with torch.no_grad():
        assert torch.equal(third(new_batch), again(new_batch))
    assert path.stat().st_size < 0.1 * Path(base["best"]).stat().st_size  # adapters only, not the base


def test_adapters_refuse_another_base(runs):
    _, adapted = runs
    with pytest.raises(AdapterError, match="other base weights"):
        load_adapters(tiny(seed=5), adapted["adapters"])
    loose = load_adapters(tiny(seed=5), adapted["adapters"], strict=False)
    assert adapter_report(loose)["trainable"] > 0
    with pytest.raises(AdapterError, match="latent_dim"):
        load_adapters(Atomizer(AtomizerConfig.preset("tiny", num_classes=10, latent_dim=32)), adapted["adapters"])
