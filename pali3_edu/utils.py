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


DATA_ENV_VAR = "PALI3_EDU_DATA"


class DataDirNotWritableError(PermissionError):
    """The course's data folder (or a folder inside it) cannot be created or written."""


_WRITABLE: set[str] = set()  # folders already checked in this process


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` if needed and prove it is writable (a probe file is written and removed).

    Raises ``DataDirNotWritableError`` (a ``PermissionError``) naming the folder and the
    ``PALI3_EDU_DATA`` environment variable when it is not: better now than after a long training
    run that then cannot save its checkpoint. Returns ``path`` as a ``Path``.
    """
    path = Path(path).expanduser()
    if str(path) in _WRITABLE and path.is_dir():
        return path  # probed before in this process (and still there): skip the probe file
    probe = path / f".write-test-{os.getpid()}-{random.getrandbits(32):08x}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with open(probe, "xb") as f:
            f.write(b"ok")
        probe.unlink()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        where = f"the data folder {path}"
        if os.environ.get(DATA_ENV_VAR):
            where += f" (from ${DATA_ENV_VAR}={os.environ[DATA_ENV_VAR]})"
        example = Path.home() / "pali3_edu_data"
        raise DataDirNotWritableError(
            f"Cannot write to {where}: {reason}. The course caches data sets, the tokenizer and "
            f"checkpoints there. Set {DATA_ENV_VAR} to a folder you can write, e.g. "
            f"`export {DATA_ENV_VAR}={example}` in a shell, or "
            f"`os.environ[\"{DATA_ENV_VAR}\"] = \"{example}\"` at the top of a notebook."
        ) from e
    _WRITABLE.add(str(path))
    return path


def data_dir(*parts: str) -> Path:
    """The course's cache folder (``data/`` in a checkout, or ``$PALI3_EDU_DATA``), created on use.

    Outside a source checkout (a plain ``pip install``) it falls back to ``~/.cache/pali3_edu``.
    The folder is checked to be writable (``check_writable``): a read-only location raises a clear
    error here, before any work whose result could not be saved.
    """
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        root = Path(env).expanduser()
    elif (_REPO_ROOT / "pyproject.toml").exists():
        root = _REPO_ROOT / "data"
    else:
        root = Path.home() / ".cache" / "pali3_edu"
    return check_writable(root.joinpath(*parts))


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
