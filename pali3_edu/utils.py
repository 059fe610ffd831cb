"""Small helpers every lesson uses: seeding, device choice and where caches live."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

_REPO_ROOT = Path(__file__).resolve().parent.parent


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and PyTorch; return a ``torch.Generator`` seeded the same way."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(prefer: str | None = None) -> torch.device:
    """``cuda`` if available, else ``mps`` (Apple), else ``cpu``; ``prefer`` overrides.

    The environment variable ``PALI3_DEVICE`` overrides both (CI sets nothing, so CPU wins there).
    """
    choice = prefer or os.environ.get("PALI3_DEVICE")
    if choice:
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def data_dir(*parts: str) -> Path:
    """The course's cache folder (``data/`` in a checkout, or ``$PALI3_EDU_DATA``), created on use.

    Outside a source checkout (a plain ``pip install``) it falls back to ``~/.cache/pali3_edu``.
    """
    env = os.environ.get("PALI3_EDU_DATA")
    if env:
        root = Path(env)
    elif (_REPO_ROOT / "pyproject.toml").exists():
        root = _REPO_ROOT / "data"
    else:
        root = Path.home() / ".cache" / "pali3_edu"
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
