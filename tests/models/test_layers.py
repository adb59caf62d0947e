"""Layers below the models: stochastic depth, the one block stack, the fused attention path."""

import pytest
import torch

from atomizer.models.atomizer import AtomizerConfig
from atomizer.models.layers import drop_path


def test_drop_path_drops_whole_sets_and_keeps_the_mean():
    x = torch.ones(4000, 3, 5)
    g = torch.Generator().manual_seed(0)
    y = drop_path(x, 0.25, training=True, generator=g)
    per_set = y[:, 0, 0]
    assert per_set.unique().tolist() == pytest.approx([0.0, 1.0 / 0.75])  # a set is dropped whole or rescaled
    assert (y == y[:, :1, :1]).all()
    assert per_set.mean().item() == pytest.approx(1.0, abs=0.05)
    assert torch.equal(drop_path(x, 0.25, training=False), x)  # identity at evaluation
    with pytest.raises(ValueError, match="drop_path"):
        AtomizerConfig(drop_path=1.0)


# --------------------------------------------------------------------------------------------------
# One block stack (layers), checkpoints' parameter names unchanged
# --------------------------------------------------------------------------------------------------

FF = ["ff.net.0.weight", "ff.net.0.bias", "ff.net.1.weight", "ff.net.1.bias", "ff.net.4.weight", "ff.net.4.bias"]
ATTN = ["attn.to_q.weight", "attn.to_kv.weight", "attn.to_out.weight", "attn.to_out.bias"]
SELF = ["norm.weight", "norm.bias", *ATTN, *FF]
HEAD = (
    ["head.query", "head.norm.weight", "head.norm.bias"]
    + [f"head.{k}" for k in ATTN]
    + [
        "head.out_norm.weight",
        "head.out_norm.bias",
        "head.fc.weight",
        "head.fc.bias",
    ]
)
#: The Atomizer's cross block: the factorised key/value projection first, then the pre-norm step.
ATOM_CROSS = ["to_kv.norm.weight", "to_kv.norm.bias", "to_kv.proj.weight", "norm.weight", "norm.bias"]
ATOM_CROSS += ["attn.to_q.weight", "attn.to_out.weight", "attn.to_out.bias", *FF]
#: The pixel Perceiver's block keeps its cross step at the block's top level ("norm", "cross", "ff").
PIXEL_CROSS = ["norm.weight", "norm.bias"] + [f"cross.{k.removeprefix('attn.')}" for k in ATTN] + FF


def _stack_keys(depth: int, self_per_cross: int, cross: list[str]) -> list[str]:
    """Latents, ``depth`` blocks (``cross`` keys, then the self blocks'), the pooling head."""
    keys = ["latents"]
    for b in range(depth):
        keys += [f"blocks.{b}.{k}" for k in cross]
        keys += [f"blocks.{b}.self.{i}.{k}" for i in range(self_per_cross) for k in SELF]
    return keys + HEAD


@pytest.mark.parametrize("tie", [True, False])
def test_state_dict_keys_and_parameter_order_are_the_stored_checkpoints(tie):
    """The block stack moved to layers (one home); stored checkpoints (and optimizer states, which follow
    the parameter order) still load: names and order as they were written."""
    from atomizer.models.registry import build_model

    atom = build_model("atomizer", "tiny", tie_weights=tie)
    assert list(atom.state_dict()) == _stack_keys(2, 1, [f"cross.{k}" for k in ATOM_CROSS])
    assert [n for n, _ in atom.named_parameters()] == list(atom.state_dict())
    pix = build_model("perceiver", "small", tie_weights=tie)  # depth 2, two self blocks per cross
    assert list(pix.state_dict()) == _stack_keys(2, 2, PIXEL_CROSS)
    vit = build_model("vit", "tiny")
    expected = ["patch_norm.weight", "patch_norm.bias", "patch_proj.weight", "patch_proj.bias"]
    expected += ["embed_norm.weight", "embed_norm.bias"]
    expected += [f"layers.{i}.{k}" for i in range(2) for k in SELF] + [
        "norm.weight",
        "norm.bias",
        "fc.weight",
        "fc.bias",
    ]
    assert list(vit.state_dict()) == expected
    if tie:
        assert atom.blocks[1] is not atom.blocks[0] and pix.blocks[1] is not pix.blocks[0]


def test_tied_stack_shares_every_block_after_the_first():
    from torch import nn

    from atomizer.models.layers import TiedStack

    tied = TiedStack(lambda: nn.Linear(2, 2), 4, tie_weights=True)
    assert tied[1] is tied[2] is tied[3] and tied[0] is not tied[1]
    untied = TiedStack(lambda: nn.Linear(2, 2), 3, tie_weights=False)
    assert len({id(m) for m in untied}) == 3
    assert len(TiedStack(lambda: nn.Linear(2, 2), 1, tie_weights=True)) == 1


# --------------------------------------------------------------------------------------------------
# The fused attention path: no attn_mask unless an attended atom is padding or nodata
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def sdpa_masks(monkeypatch):
    """Every ``attn_mask`` that ``F.scaled_dot_product_attention`` receives, with the keys' length."""
    import torch.nn.functional as F

    calls: list[tuple[int, object]] = []
    real = F.scaled_dot_product_attention

    def recorder(q, k, v, attn_mask=None, **kw):
        calls.append((k.shape[-2], attn_mask))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recorder)
    return calls


@pytest.fixture(scope="module")
def atom_sets(ben_patch_paths):
    """Two sets of one modality (24 px at 50 m, 5 bands), and one of another (12 px at 100 m, 3 bands)."""
    from atomizer.atoms.tokens import tokenize
    from atomizer.data.modalities import Modality, simulate
    from atomizer.data.readers import open_image

    a = Modality("a", 24, 50, ("B02", "B03", "B04", "B08", "B11"))
    b = Modality("b", 12, 100, ("B02", "B03", "B04"))
    images = [open_image(p) for p in ben_patch_paths[:2]]
    return [tokenize(simulate(im, a)) for im in images], tokenize(simulate(images[0], b))


def _tiny_atomizer():
    from atomizer.models.registry import build_model

    torch.manual_seed(0)
    return build_model("atomizer", "tiny")


def test_unpadded_batch_takes_the_fused_path_without_a_mask(sdpa_masks, atom_sets):
    from atomizer.atoms.tokens import collate

    same, _ = atom_sets
    batch = collate(same)
    assert bool(batch.mask.all())
    model = _tiny_atomizer()
    for training in (False, True):  # evaluation, and training with token pruning
        sdpa_masks.clear()
        model.train(training)
        out = model(batch)
        if training:
            out.sum().backward()
        n_cross = sum(1 for n, _ in sdpa_masks if n > model.cfg.num_latents)
        assert n_cross == model.cfg.depth and len(sdpa_masks) == 2 * model.cfg.depth + 1  # cross, self, pool
        assert all(m is None for _, m in sdpa_masks)


def test_padded_batch_masks_only_where_it_must(sdpa_masks, atom_sets):
    from atomizer.atoms.tokens import collate

    same, other = atom_sets
    model = _tiny_atomizer()
    # padding, but every set has equally many valid atoms: pruning keeps as many of each, all valid -> no mask
    padded = collate(same, pad_to=same[0].value.shape[1] + 37)
    model.train()
    model(padded, generator=torch.Generator().manual_seed(0))
    assert all(m is None for _, m in sdpa_masks)
    # at evaluation every atom is read, padding included: the cross-attention masks it, nothing else does
    sdpa_masks.clear()
    model.eval()
    with torch.no_grad():
        alone = model(collate(same))
        sdpa_masks.clear()
        torch.testing.assert_close(model(padded), alone, rtol=1e-5, atol=1e-5)
    masked = [n for n, m in sdpa_masks if m is not None]
    assert masked == [padded.value.shape[1]] * model.cfg.depth
    # sets of different sizes: masked at evaluation and in training (they keep different counts)
    mixed = collate([same[0], other])
    for training in (False, True):
        sdpa_masks.clear()
        model.train(training)
        model(mixed)
        assert sum(m is not None for _, m in sdpa_masks) == model.cfg.depth


@pytest.mark.parametrize("arch", ["perceiver", "vit", "scalemae"])
def test_canvas_transformers_never_mask(sdpa_masks, arch):
    from atomizer.atoms.canvas import CanvasBatch
    from atomizer.models.registry import build_model

    model = build_model(arch, "tiny")
    model(CanvasBatch(torch.randn(2, 12, 16, 16), torch.tensor([10.0, 20.0]), torch.ones(2, 12, dtype=torch.bool)))
    assert sdpa_masks and all(m is None for _, m in sdpa_masks)
