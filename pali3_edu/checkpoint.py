"""Checkpoints you can trust: a folder of safe file formats, written atomically, checked on load.

A checkpoint is a **directory**::

    run/checkpoint/
        model.safetensors   the weights (safetensors: plain tensors, no code can hide in it)
        state.pt            optimizer state, step, history, RNG states, config, your ``meta``
                            (read with ``torch.load(weights_only=True)``: tensors, numbers,
                            strings, lists, dicts only; anything else is refused)
        meta.json           the manifest: format version, step, and the sha256 of each file

Writing goes to ``<dir>.tmp-<pid>`` first. Only when every file and the manifest are on disk is
the folder swapped in: the old checkpoint is renamed to ``<dir>.prev``, the new one to ``<dir>``,
then ``<dir>.prev`` is deleted. A crash at any moment leaves either the old or the new checkpoint
complete; :func:`load_checkpoint` falls back to ``<dir>.prev`` when ``<dir>`` is missing,
incomplete or corrupt (a file whose sha256 differs from the manifest) and says so.

Old single-file ``.pt`` checkpoints are refused instead of unpickled: unpickling a file can run
arbitrary code, so the course never does it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "pali3-edu-checkpoint"
VERSION = 1
WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "state.pt"
MANIFEST_FILE = "meta.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged, from another configuration, or does not fit the model.
    The message says what to do."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _weights_of(model: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Plain CPU tensors, each with its own storage (safetensors refuses shared storage, e.g. a
    language-model head tied to the embedding; both names are kept, each with a copy)."""
    sd = model.state_dict() if isinstance(model, nn.Module) else model
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"Weight {k!r} is a {type(v).__name__}, not a tensor.")
        out[k] = v.detach().to("cpu", copy=True).contiguous()
    return out


def _write_file(path: Path, write) -> None:
    write(path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_checkpoint(path: str | Path, model: nn.Module | Mapping[str, torch.Tensor], **state: Any) -> Path:
    """Write ``model``'s weights and ``state`` (optimizer state, step, history, ...) as the
    checkpoint folder ``path``, atomically. ``model`` may also be a state dict (e.g. the full
    weights gathered from an FSDP model). ``state`` may hold tensors, numbers, strings, ``None``
    and lists/tuples/dicts of them. Returns ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    _check_plain(state, "state")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        raise CheckpointError(
            f"{path} is a file (an old single-file checkpoint?). Delete it: checkpoints are folders now."
        )
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights = _weights_of(model)
    _write_file(tmp / WEIGHTS_FILE, lambda p: save_file(weights, str(p), metadata={"format": FORMAT}))
    _write_file(tmp / STATE_FILE, lambda p: torch.save(state, p))
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "step": state.get("step"),
        "files": {name: {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
                  for name in (WEIGHTS_FILE, STATE_FILE)},
        "meta": state.get("meta"),
    }
    _write_file(tmp / MANIFEST_FILE, lambda p: p.write_text(json.dumps(manifest, indent=1, default=str)))
    _fsync_dir(tmp)

    prev = path.with_name(path.name + ".prev")
    if _is_complete(path):
        # the current checkpoint becomes .prev (an older .prev goes) until the new one is in place
        if prev.exists():
            _remove(prev)
        os.replace(path, prev)
    elif path.exists():  # a damaged leftover: keep .prev (if any) as the good one
        _remove(path)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if prev.exists():
        _remove(prev)
    for stale in path.parent.glob(f"{path.name}.tmp-*"):  # left by a process killed mid-write
        if stale != tmp and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return path


_PLAIN = (type(None), bool, int, float, str, torch.Tensor, torch.dtype, torch.Size)


def _check_plain(obj: Any, where: str) -> None:
    """Refuse what ``torch.load(weights_only=True)`` would refuse, before writing it."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise TypeError(
            f"Checkpoint {where} is a {type(obj).__name__}; store only tensors, numbers, strings, "
            "None and lists/dicts of them (e.g. dataclasses.asdict(x) for a dataclass)."
        )


def _remove(path: Path) -> None:
    """Delete a checkpoint folder: rename first (atomic), then delete the renamed copy."""
    doomed = path.with_name(f"{path.name}.old-{os.getpid()}")
    if doomed.exists():
        shutil.rmtree(doomed)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _is_complete(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST_FILE).is_file()


def _verify(path: Path) -> dict[str, Any]:
    """The manifest of a complete, uncorrupted checkpoint folder, else CheckpointError."""
    advice = f"Delete the folder {path} and train again."
    if not path.is_dir():
        raise CheckpointError(f"No checkpoint at {path}. Train the model first (or fix the path).")
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"Checkpoint {path} is incomplete (no {MANIFEST_FILE}; the writer was interrupted). {advice}"
        ) from None
    except (OSError, ValueError) as err:
        raise CheckpointError(f"Checkpoint {path} is corrupt or incomplete ({MANIFEST_FILE}: {err}). {advice}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pali3-edu checkpoint folder. {advice}")
    if manifest.get("version") != VERSION:
        raise CheckpointError(
            f"Checkpoint {path} has format version {manifest.get('version')}, this code reads "
            f"version {VERSION}. {advice}"
        )
    files = manifest.get("files") or {}
    for name in (WEIGHTS_FILE, STATE_FILE):
        entry = files.get(name)
        f = path / name
        if not isinstance(entry, dict) or not f.is_file():
            raise CheckpointError(f"Checkpoint {path} is corrupt or incomplete ({name} is missing). {advice}")
        if f.stat().st_size != entry.get("bytes") or _sha256(f) != entry.get("sha256"):
            raise CheckpointError(
                f"Checkpoint {path} is corrupt or incomplete ({name} does not match the sha256 in "
                f"{MANIFEST_FILE}: truncated or modified). {advice}"
            )
    return manifest


def resolve_checkpoint(path: str | Path) -> Path:
    """The folder to load: ``path`` if it is a good checkpoint, else ``<path>.prev`` if that
    one is (with a printed note), else CheckpointError explaining what is wrong with ``path``."""
    path = Path(path)
    if path.is_file():
        raise CheckpointError(
            f"{path} is a single-file checkpoint from an older version of the course. It is not "
            "loaded, because unpickling a file can run arbitrary code. Delete it and train again "
            "(checkpoints are folders of safetensors and plain data now)."
        )
    try:
        _verify(path)
        return path
    except CheckpointError as err:
        prev = path.with_name(path.name + ".prev")
        try:
            _verify(prev)
        except CheckpointError:
            raise err from None
        why = "missing" if not path.exists() else "incomplete or damaged"
        print(f"checkpoint: {path} is {why}; using the previous good checkpoint {prev}.")
        return prev


def _load_state(folder: Path) -> dict[str, Any]:
    try:
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle with code in it, truncated zip, ...
        raise CheckpointError(
            f"Checkpoint {folder}/{STATE_FILE} cannot be read safely ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). It was not unpickled. Delete the "
            f"folder {folder} and train again."
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{folder}/{STATE_FILE} is not a training state. Delete the folder {folder} and train again.")
    return state


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(folder / WEIGHTS_FILE), device="cpu")
    except Exception as err:
        raise CheckpointError(
            f"Checkpoint {folder}/{WEIGHTS_FILE} cannot be read ({type(err).__name__}: {err}). "
            f"Delete the folder {folder} and train again."
        ) from err


def check_fits(weights: Mapping[str, torch.Tensor], model: nn.Module, where: str | Path = "checkpoint") -> None:
    """CheckpointError naming missing/unexpected keys and shape mismatches between ``weights``
    and ``model``'s state dict, or non-finite weights."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in weights and tuple(weights[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        def few(items: list[str]) -> str:
            return ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")

        parts = [f"missing: {few(missing)}" if missing else "",
                 f"unexpected: {few(unexpected)}" if unexpected else "",
                 f"shapes differ: {few(shapes)}" if shapes else ""]
        raise CheckpointError(
            f"Checkpoint {where} does not fit this model (was it trained with another config "
            f"preset?). {'; '.join(p for p in parts if p)}. Build the model with the checkpoint's "
            f"config (use the right preset), or delete the folder {where} and train again."
        )
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"Checkpoint {where} holds NaN/inf weights ({', '.join(bad[:6])}). The run that wrote it "
            f"diverged: delete the folder {where} and train again (with a lower learning rate)."
        )


def load_checkpoint(path: str | Path, model: nn.Module | None = None) -> dict[str, Any]:
    """Read the checkpoint folder ``path`` (or its ``.prev`` fallback) and, if given, load its
    weights into ``model``.

    Returns the saved state (``step``, ``optimizer``, ``history``, ``train_config``, ``meta``,
    ...) plus ``"model"`` (the weights as a state dict) and ``"path"`` (the folder actually read).
    Raises :class:`CheckpointError` with what to do when the folder is missing, incomplete,
    corrupt, an old single-file checkpoint, or does not fit ``model``.
    """
    folder = resolve_checkpoint(path)
    state = _load_state(folder)
    weights = _load_weights(folder)
    if model is not None:
        check_fits(weights, model, folder)
        model.load_state_dict(weights)
    state["model"] = weights
    state["path"] = str(folder)
    return state


def check_writable(path: str | Path) -> None:
    """Make sure the checkpoint ``path`` can be written (its parent is created and a probe file
    written and deleted) before any training time is spent."""
    path = Path(path)
    parent = path.parent
    probe = parent / f".write-probe-{os.getpid()}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise CheckpointError(
            f"Cannot write checkpoints to {parent} ({type(err).__name__}: {err.strerror or err}). "
            "Choose a writable folder, or move the course's cache folder with the environment "
            "variable PALI3_EDU_DATA (e.g. `export PALI3_EDU_DATA=/tmp/pali3_edu`)."
        ) from err

