"""The Atomizer encoder: shapes, masks, invariances, any sensor, overfitting, streaming, checkpoints."""

import pytest
import torch

from atomizer.atoms.tokens import collate, tokenize
from atomizer.data.bands import get_sensor
from atomizer.data.modalities import Modality, simulate
from atomizer.data.readers import build_image, open_image
from atomizer.models.atomizer import PRESETS, Atomizer, AtomizerConfig, prune_index
from atomizer.models.checkpoint import CheckpointError, load_into, load_model, save_checkpoint


@pytest.fixture(scope="module")
def patch(ben_patch_paths):
    return open_image(ben_patch_paths[0])


@pytest.fixture(scope="module")
def small_set(patch):
    return tokenize(simulate(patch, Modality("m", 24, 50, ("B02", "B03", "B04", "B08", "B11"))))


def tiny(**kw) -> Atomizer:
    torch.manual_seed(0)
    return Atomizer(AtomizerConfig.preset("tiny", **kw)).eval()


def test_output_shape_on_native_patch(patch):
    model = tiny(num_classes=19)
    with torch.no_grad():
        out = model(tokenize(patch))
    assert out.shape == (1, 19) and torch.isfinite(out).all()


def test_padding_and_masked_garbage_have_no_influence(small_set):
    model = tiny()
    n = small_set.value.shape[1]
    padded = collate([small_set], pad_to=n + 500)
    g = torch.Generator().manual_seed(1)
    padded.value[:, n:] = torch.randn(1, 500, generator=g) * 100  # garbage values
    padded.band[:, n:] = torch.randint(0, small_set.band_table.shape[0], (1, 500), generator=g)
    padded.xi[:, n:] = torch.randint(0, small_set.coord_x.shape[0], (1, 500), generator=g)
    padded.yi[:, n:] = torch.randint(0, small_set.coord_y.shape[0], (1, 500), generator=g)
    with torch.no_grad():
        a, b = model(small_set), model(padded)
        # and a garbage atom that is NOT masked does change the output (the test can fail)
        padded.mask[:, n:] = True
        c = model(padded)
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, c, atol=1e-3)


def test_batch_of_mixed_sets_equals_sets_alone(patch, small_set):
    model = tiny()
    other = tokenize(simulate(patch, Modality("n", 10, 60, ("B02", "B08"))))
    with torch.no_grad():
        both = model(collate([small_set, other]))
        a, b = model(small_set), model(other)
    assert torch.allclose(both[0], a[0], atol=1e-5) and torch.allclose(both[1], b[0], atol=1e-5)


def test_a_batch_in_its_wire_form_reads_the_same(patch):
    """A compact batch handed to the model without ``.to()`` (index runs, uint16 DN) is rebuilt first:
    the same logits, bit for bit, and streaming evaluation too."""
    model = tiny(num_classes=5)
    crop = simulate(patch, Modality("c", 40, 10, ("B02", "B03", "B04", "B08")))  # native grid: DN travel
    wire = tokenize(crop, wire="compact")
    assert wire.value.dtype == torch.uint16 and wire.runs is not None
    with torch.no_grad():
        assert torch.equal(model(wire), model(tokenize(crop)))
        assert torch.equal(model(wire, chunk_size=1000), model(tokenize(crop), chunk_size=1000))


def test_permutation_invariance_at_evaluation(small_set):
    model = tiny()
    perm = torch.randperm(small_set.value.shape[1], generator=torch.Generator().manual_seed(0))[None]
    shuffled = small_set.select(perm)
    with torch.no_grad():
        assert torch.allclose(model(small_set), model(shuffled), atol=1e-5)


def test_pruning_draws_only_valid_atoms_independently_per_set():
    mask = torch.zeros(2, 100, dtype=torch.bool)
    mask[0, :80] = True
    mask[1, 50:70] = True
    idx, keep = prune_index(mask, 0.5, torch.Generator().manual_seed(0))
    assert keep.sum(1).tolist() == [40, 10]
    assert bool(mask.gather(1, idx)[keep].all())
    assert len(set(idx[0][keep[0]].tolist())) == 40  # no duplicates
    idx2, _ = prune_index(mask, 0.5, torch.Generator().manual_seed(1))
    assert not torch.equal(idx, idx2)


def test_pruning_only_in_training(small_set):
    model = tiny(prune_p=0.5)
    with torch.no_grad():
        e1, e2 = model(small_set), model(small_set)
        model.train()
        t1, t2 = model(small_set), model(small_set)
    assert torch.equal(e1, e2)
    assert not torch.allclose(t1, t2)


def _image_for_sensor(patch, sensor_name, n_bands=None):
    """A real patch's reflectance described with another sensor's band table (nearest S2 band's pixels)."""
    sensor = get_sensor(sensor_name)
    s2 = get_sensor("sentinel2")
    s2_bands = [b for b in s2.bands if b.name in patch]
    bands = [b for b in sensor.bands if b.domain == "optical"][: n_bands or None]
    arrays = {}
    for b in bands:
        near = min(s2_bands, key=lambda s: abs(s.wavelength_nm - b.wavelength_nm))
        arrays[b.name] = patch[near.name].values[:20, :20]
    return build_image(arrays, sensor, gsd={b.name: 30.0 for b in bands})


@pytest.mark.parametrize("sensor,n_bands,expected_bands", [("landsat8", None, 9), ("enmap", 200, 200)])
def test_model_runs_unchanged_on_other_sensors(patch, sensor, n_bands, expected_bands):
    model = tiny()
    img = _image_for_sensor(patch, sensor, n_bands)
    t = tokenize(img)
    assert t.band_table.shape[0] == expected_bands
    with torch.no_grad():
        out = model(t)
        s2 = model(tokenize(patch))
    assert out.shape == s2.shape == (1, 19) and torch.isfinite(out).all()


def test_factorised_projection_equals_materialised_layernorm_linear(small_set):
    model = tiny()
    blk = model.blocks[0]["cross"].to_kv
    with torch.no_grad():
        for p in blk.parameters():
            p.normal_()
        v, fx, fy, fb = model.encoder.parts(small_set)
        fast = blk(v, fx, fy, fb, small_set.xi, small_set.yi, small_set.band)
        ref = blk.reference(model.encoder.materialize(small_set))
    assert torch.allclose(fast, ref, atol=1e-4 * float(ref.abs().max()))


def test_streaming_cross_attention_is_exact(patch):
    model = tiny()
    t = tokenize(patch)
    with torch.no_grad():
        full = model(t)
        chunked = model(t, chunk_size=9_999)
    assert torch.allclose(full, chunked, atol=1e-5)


def test_attention_weights_returned_per_block(small_set):
    model = tiny()
    with torch.no_grad():
        logits, weights = model(small_set, return_attention=True)
    cfg = model.cfg
    assert len(weights) == cfg.depth
    n = small_set.value.shape[1]
    assert weights[0].shape == (1, cfg.cross_heads, cfg.num_latents, n)
    assert torch.allclose(weights[0].sum(-1), torch.ones(1, cfg.cross_heads, cfg.num_latents), atol=1e-5)
    assert torch.allclose(logits, model(small_set), atol=1e-5)


def test_weight_tying_and_paper_preset():
    tied = Atomizer(AtomizerConfig.preset("tiny", depth=4, tie_weights=True))
    untied = Atomizer(AtomizerConfig.preset("tiny", depth=4, tie_weights=False))
    assert tied.blocks[1] is tied.blocks[3] and tied.blocks[0] is not tied.blocks[1]
    assert untied.num_parameters() > tied.num_parameters()
    p = PRESETS["paper"]
    assert (
        p.depth,
        p.self_per_cross,
        p.latent_dim,
        p.latent_heads,
        p.latent_dim_head,
        p.cross_heads,
        p.cross_dim_head,
        p.num_latents,
        p.tie_weights,
        p.prune_p,
    ) == (4, 4, 512, 8, 64, 1, 64, 128, True, 0.5)


def test_empty_set_refused(small_set):
    model = tiny()
    empty = collate([small_set])
    empty.mask[:] = False
    with pytest.raises(ValueError, match="empty token set"):
        model(empty)


def test_tiny_model_overfits_real_patches(ben_patch_paths):
    from atomizer.data.datasets import BigEarthNetNpz

    ds = BigEarthNetNpz(split="train")
    items = [ds[i] for i in range(4)]
    m = Modality("o", 10, 60, ("B02", "B03", "B04", "B08", "B11"))
    batch = collate([tokenize(simulate(it["image"], m)) for it in items])
    y = torch.stack([it["target"] for it in items])
    torch.manual_seed(0)
    model = Atomizer(AtomizerConfig.preset("tiny", prune_p=0.0)).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(120):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_checkpoint_roundtrip_and_mismatch(tmp_path, small_set):
    model = tiny(num_classes=10)
    path = save_checkpoint(tmp_path / "m.pt", model, {"classes": list("abcdefghij")})
    back = load_model(path)
    assert isinstance(back, Atomizer)
    with torch.no_grad():
        assert torch.equal(model(small_set), back(small_set))
    other = Atomizer(AtomizerConfig.preset("tiny", num_classes=10, latent_dim=32))
    with pytest.raises(CheckpointError, match="latent_dim: checkpoint has 64, model has 32"):
        load_into(other, path)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_model(tmp_path / "bad.pt")


def test_checkpointed_token_blocks_give_identical_gradients(small_set):
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        model = Atomizer(AtomizerConfig.preset("tiny", checkpoint_tokens=flag)).train()
        model(small_set, generator=torch.Generator().manual_seed(5)).sum().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-5), k


def test_factorised_projection_gradients_with_learnable_feature_tables(small_set):
    """Gradients reach the feature tables too (adapters train them) and match the materialised path."""
    model = tiny()
    blk = model.blocks[0]["cross"].to_kv
    v, fx, fy, fb = model.encoder.parts(small_set)
    grads = []
    for fast in (True, False):
        fb_ = fb.clone().requires_grad_(True)
        if fast:
            out = blk(v, fx, fy, fb_, small_set.xi, small_set.yi, small_set.band)
        else:
            out = blk.reference(torch.cat([v, fx[small_set.xi], fy[small_set.yi], fb_[small_set.band]], -1))
        out.square().mean().backward()
        grads.append(fb_.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-4 * float(grads[1].abs().max()))


def test_checkpointed_blocks_recompute_keys_and_values_but_not_attention(ben_patch_paths, monkeypatch):
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    import atomizer.models.atomizer as model_module

    atoms = tokenize(open_image(ben_patch_paths[0]))  # a dense set: the fused kernel, no mask

    def op_counts() -> dict:
        model = Atomizer(AtomizerConfig.preset("tiny", checkpoint_tokens=True)).train()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(atoms, generator=torch.Generator().manual_seed(1)).sum().backward()
        return {e.key: e.count for e in prof.key_averages()}

    ours = op_counts()
    recompute_all = lambda ctx, op, *a, **k: CheckpointPolicy.PREFER_RECOMPUTE  # noqa: E731
    monkeypatch.setattr(
        model_module, "_checkpoint_context", lambda: create_selective_checkpoint_contexts(recompute_all)
    )
    plain = op_counts()
    flash = "aten::_scaled_dot_product_flash_attention_for_cpu"
    depth = AtomizerConfig.preset("tiny").depth
    assert ours[flash] == plain[flash] - depth  # each cross-attention ran once less: its outputs were kept
    assert ours["aten::embedding"] == plain["aten::embedding"] > 0  # keys/values were still recomputed


def test_checkpointed_tied_blocks_train_under_bf16_autocast(small_set):
    """Tied blocks reuse autocast's cached weight casts; checkpointing must still replay (paper preset on GPU)."""
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        model = Atomizer(AtomizerConfig.preset("tiny", depth=3, checkpoint_tokens=flag)).train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(small_set, generator=torch.Generator().manual_seed(5))
        out.float().sum().backward()
        grads.append(model.blocks[1]["cross"].to_kv.proj.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0])


def test_checkpoint_written_before_a_new_config_field_still_loads(tmp_path):
    """A field added later (here ``encoding.gsd_code``) takes its default when an older checkpoint is read."""
    model = tiny(num_classes=10)
    path = save_checkpoint(tmp_path / "m.pt", model)
    payload = torch.load(path, weights_only=True)
    del payload["config"]["encoding"]["gsd_code"]  # as written before the field existed
    torch.save(payload, path)
    load_into(tiny(num_classes=10), path)  # no "configuration differs" error
    assert load_model(path).cfg == model.cfg
