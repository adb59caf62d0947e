"""On the GPU: bf16 training steps of Atomizer and ResNet, and a DDP step over NCCL with one process."""

from __future__ import annotations

import pytest
import torch
from gpu_support import GPU, ben_batch, bf16_steps, small, test_device

from atomizer.models.registry import build_model, input_type

pytestmark = GPU


@pytest.mark.parametrize("arch", ["atomizer", "resnet"])
def test_bf16_training_steps_are_finite_and_move_the_weights(arch):
    device = test_device()
    torch.manual_seed(0)
    model = build_model(arch, "tiny", num_classes=19).to(device).train()
    batch = ben_batch(input_type(model), n=4 if small() else 8)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    losses = bf16_steps(model, batch, device, steps=2 if small() else 3)
    assert all(torch.isfinite(torch.tensor(losses))), losses
    for k, p in model.named_parameters():
        assert torch.isfinite(p).all(), k
    trained = [k for k, p in model.named_parameters() if p.requires_grad]
    moved = [k for k in trained if not torch.equal(before[k], dict(model.named_parameters())[k].detach())]
    assert len(moved) == len(trained), sorted(set(trained) - set(moved))  # AdamW moves every trained weight
    if device.type == "cuda":  # the forward really ran in bf16
        with torch.autocast("cuda", dtype=torch.bfloat16):
            h = model(batch["input"].to(device))
        assert h.device.type == "cuda" and torch.isfinite(h.float()).all()


def test_ddp_with_one_process_runs_a_step(tmp_path, monkeypatch):
    """DistributedDataParallel over NCCL (gloo in the CPU dry run), world size 1: a step runs, gradients are
    all-reduced (to themselves) and the weights move."""
    from datetime import timedelta

    import torch.distributed as dist

    device = test_device()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "gloo":  # one process on this machine: the loopback interface (no lookup of the host's name)
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    # a stuck rendezvous or collective raises after 2 minutes instead of holding the run until its time limit
    dist.init_process_group(
        backend, init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1, timeout=timedelta(minutes=2)
    )
    try:
        assert dist.get_world_size() == 1 and dist.get_backend() == backend
        torch.manual_seed(0)
        model = build_model("atomizer", "tiny", num_classes=19).to(device).train()
        ids = [torch.cuda.current_device()] if device.type == "cuda" else None
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        before = [p.detach().clone() for p in model.parameters()]
        losses = bf16_steps(ddp, ben_batch(input_type(model), n=4), device, steps=2)
        assert all(torch.isfinite(torch.tensor(losses))), losses
        assert any(not torch.equal(a, p.detach()) for a, p in zip(before, model.parameters()))
        t = torch.arange(4.0, device=device)
        dist.all_reduce(t)
        assert torch.equal(t.cpu(), torch.arange(4.0))
    finally:
        dist.destroy_process_group()
