"""Helpers for the tests that run several gloo processes on this machine (spawned, one thread each)."""

import datetime
import os
import socket
import time
from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_group(rank: int, world: int, port: int) -> None:
    """Inside a spawned worker: one thread, and join the gloo group on ``port``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))


def spawn(worker: Callable, world: int, *args, timeout: float = 90) -> None:
    """Run ``worker(rank, world, port, *args)`` in ``world`` spawned processes and wait for them;
    the test fails (and the processes are killed) after ``timeout`` seconds."""
    ctx = mp.start_processes(worker, args=(world, free_port(), *args), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"distributed workers did not finish within {timeout} s")
