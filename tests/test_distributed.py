"""The multi-process sigmoid loss with gloo on CPU: loss and gradients equal the single-process ones."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from gloo import join_group, spawn

from pali3_edu.siglip import distributed_sigmoid_loss, sigmoid_loss

LOCAL_BATCH, DIM, T_PRIME, BIAS = 3, 8, 1.3, -4.0


def _global_batch(world):
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(world * LOCAL_BATCH, DIM, generator=g, dtype=torch.float64), dim=-1)
    y = F.normalize(torch.randn(world * LOCAL_BATCH, DIM, generator=g, dtype=torch.float64), dim=-1)
    return x, y


def _worker(rank, world, port, out_dir):
    join_group(rank, world, port)
    try:
        x, y = _global_batch(world)
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        lx, ly = x[rows].clone().requires_grad_(), y[rows].clone().requires_grad_()
        tp = torch.tensor(T_PRIME, dtype=torch.float64, requires_grad=True)
        b = torch.tensor(BIAS, dtype=torch.float64, requires_grad=True)
        loss = distributed_sigmoid_loss(lx, ly, tp, b)
        loss.backward()
        torch.save(dict(loss=loss.detach(), gx=lx.grad, gy=ly.grad, gt=tp.grad, gb=b.grad),
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_loss_and_grads_match_single_process(world):
    x, y = _global_batch(world)
    x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
    tp = torch.tensor(T_PRIME, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(BIAS, dtype=torch.float64, requires_grad=True)
    ref = sigmoid_loss(x, y, tp, b)
    ref.backward()

    with tempfile.TemporaryDirectory() as out_dir:
        spawn(_worker, world, out_dir)
        results = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(world)]

    for r, res in enumerate(results):
        rows = slice(r * LOCAL_BATCH, (r + 1) * LOCAL_BATCH)
        torch.testing.assert_close(res["loss"], ref.detach())  # global value on every rank
        torch.testing.assert_close(res["gx"], x.grad[rows])  # image grads: local
        torch.testing.assert_close(res["gy"], y.grad[rows])  # text grads: came back along the ring
    # replicated scalars: each rank holds its share; the sum is the single-process gradient
    torch.testing.assert_close(sum(res["gt"] for res in results), tp.grad)
    torch.testing.assert_close(sum(res["gb"] for res in results), b.grad)
