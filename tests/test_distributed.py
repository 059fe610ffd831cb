"""The multi-process sigmoid loss with gloo on CPU: loss and gradients equal the single-process ones."""

import os
import socket
import tempfile
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from pali3_edu.siglip import distributed_sigmoid_loss, sigmoid_loss

LOCAL_BATCH, DIM, T_PRIME, BIAS = 3, 8, 1.3, -4.0


def _global_batch(world):
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(world * LOCAL_BATCH, DIM, generator=g, dtype=torch.float64), dim=-1)
    y = F.normalize(torch.randn(world * LOCAL_BATCH, DIM, generator=g, dtype=torch.float64), dim=-1)
    return x, y


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=__import__("datetime").timedelta(seconds=60))
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


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(world, out_dir, timeout=90):
    ctx = mp.start_processes(_worker, args=(world, _free_port(), out_dir), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"distributed workers did not finish within {timeout} s")


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_loss_and_grads_match_single_process(world):
    x, y = _global_batch(world)
    x, y = x.clone().requires_grad_(), y.clone().requires_grad_()
    tp = torch.tensor(T_PRIME, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(BIAS, dtype=torch.float64, requires_grad=True)
    ref = sigmoid_loss(x, y, tp, b)
    ref.backward()

    with tempfile.TemporaryDirectory() as out_dir:
        _spawn(world, out_dir)
        results = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(world)]

    for r, res in enumerate(results):
        rows = slice(r * LOCAL_BATCH, (r + 1) * LOCAL_BATCH)
        torch.testing.assert_close(res["loss"], ref.detach())  # global value on every rank
        torch.testing.assert_close(res["gx"], x.grad[rows])  # image grads: local
        torch.testing.assert_close(res["gy"], y.grad[rows])  # text grads: came back along the ring
    # replicated scalars: each rank holds its share; the sum is the single-process gradient
    torch.testing.assert_close(sum(res["gt"] for res in results), tp.grad)
    torch.testing.assert_close(sum(res["gb"] for res in results), b.grad)
