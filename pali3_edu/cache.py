"""Safe on-disk caches: verified on load, rebuilt when damaged, and safe to build from many processes.

Every cache the course writes under ``data/`` (ShapesWorld data sets, the tokenizer, training runs)
is a *folder* that goes through the same four steps:

1. **Build privately.** ``build(tmp)`` writes into a fresh temporary folder next to the final one
   (same disk, so the rename below is atomic). Nobody else ever looks inside it.
2. **Seal.** ``write_manifest(tmp)`` records the size and SHA-256 of every file in
   ``manifest.json``.
3. **Publish atomically.** ``os.replace(tmp, final)`` makes the finished folder appear in one step:
   a reader sees either no folder or a complete one, never a half-written copy.
4. **Verify on load.** ``verify_manifest(final)`` re-hashes the files (cheap: a few MB) *before*
   anything parses them, so a truncated or bit-flipped file is rebuilt with a printed message
   instead of giving a cryptic error, or crashing the kernel inside a memory-mapped reader.

Only one process builds a given folder at a time: ``file_lock`` holds an OS lock
(``fcntl.flock``) on ``<final>.lock`` next to the folder; the others wait, then find the finished
copy and read it. Where no such lock exists (Windows, some network disks) the private build + atomic
rename still keeps every reader safe; the only cost is that several processes may build the same
thing, and the first to finish wins.

    >>> from pali3_edu.cache import build_or_load_dir
    >>> from pali3_edu.utils import data_dir
    >>> def build(tmp):                               # writes files into the empty folder `tmp`
    ...     (tmp / "numbers.txt").write_text("1 2 3")
    >>> folder = build_or_load_dir(data_dir("demo") / "v1", build, name="demo numbers")

API (stable; other modules rely on it):

- ``build_or_load_dir(final, build, *, name, rebuild=False, meta=None) -> Path``
- ``write_manifest(folder, *, meta=None) -> Path``  (the manifest file)
- ``verify_manifest(folder) -> list[str]``  (problems; empty when the folder is intact)
- ``read_manifest(folder) -> dict | None``, ``sha256_file(path) -> str``
- ``file_lock(path, *, message=None)``  (context manager; exclusive lock on the file ``path``)
- ``atomic_write_bytes(path, data)``, ``atomic_write_text(path, text)``
- ``lock_path(final) -> Path``, ``discard_dir(path) -> None``
- ``MANIFEST_NAME`` (``"manifest.json"``), ``LOCK_SUFFIX`` (``".lock"``), ``TMP_MARKER``
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

try:  # POSIX advisory locks; absent on Windows
    import fcntl
except ImportError:  # pragma: no cover - exercised only on Windows
    fcntl = None  # type: ignore[assignment]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "pali3_edu-manifest/1"
LOCK_SUFFIX = ".lock"
# Temporary and discarded folders are hidden siblings: ".<name>.tmp-<pid>-<random>" and
# ".<name>.damaged-<pid>-<random>"; ``clear`` helpers can recognise them by these markers.
TMP_MARKER = ".tmp-"
DAMAGED_MARKER = ".damaged-"
_CHUNK = 1 << 20


def _say(message: str) -> None:
    """Tell the learner what is happening (visible in notebooks and terminals alike)."""
    print(message, file=sys.stderr, flush=True)


def _unique_suffix() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------------------------
# Hashing and manifests
# --------------------------------------------------------------------------------------------


def sha256_file(path: Path | str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    """Every regular file under ``folder`` except the manifest, sorted by relative path."""
    out = [p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST_NAME]
    return sorted(out, key=lambda p: p.relative_to(folder).as_posix())


def write_manifest(folder: Path | str, *, meta: dict[str, Any] | None = None) -> Path:
    """Record size and SHA-256 of every file in ``folder`` (recursively) in ``folder/manifest.json``.

    Call it once the folder is complete. ``meta`` (JSON-serialisable) is stored alongside, for
    humans and for your own checks (e.g. the fingerprint of the recipe that built the folder).
    Returns the manifest's path.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"write_manifest needs an existing folder, got {folder}")
    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in _files(folder)
    }
    manifest = {"format": MANIFEST_FORMAT, "files": files, "meta": meta or {}}
    path = folder / MANIFEST_NAME
    atomic_write_text(path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return path


def read_manifest(folder: Path | str) -> dict[str, Any] | None:
    """The parsed manifest of ``folder``, or ``None`` if it is missing or unreadable."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None
    return manifest


def verify_manifest(folder: Path | str) -> list[str]:
    """Problems with ``folder`` compared with its manifest; an empty list means it is intact.

    Checks that the manifest exists and parses, and that every listed file exists with the
    recorded size (cheap: catches truncation) and SHA-256 (reads every byte: catches flipped
    bits). Files that are not listed (e.g. ``datasets`` writes ``cache-*.arrow`` files next to a
    data set it maps) are ignored.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} is missing or not a folder"]
    manifest = read_manifest(folder)
    if manifest is None:
        state = "unreadable" if (folder / MANIFEST_NAME).exists() else "missing"
        return [f"{MANIFEST_NAME} is {state} (an interrupted build, or a cache from an older version)"]
    if manifest.get("format") != MANIFEST_FORMAT:
        return [f"{MANIFEST_NAME} has format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}"]
    problems: list[str] = []
    sized: list[tuple[str, Path, str]] = []
    for rel, entry in sorted(manifest["files"].items()):
        path = folder / rel
        try:
            size = path.stat().st_size
        except OSError:
            problems.append(f"{rel}: missing")
            continue
        if not isinstance(entry, dict) or size != entry.get("size"):
            want = entry.get("size") if isinstance(entry, dict) else "?"
            problems.append(f"{rel}: {size} bytes, the manifest says {want} (truncated or rewritten)")
            continue
        sized.append((rel, path, str(entry.get("sha256"))))
    for rel, path, want in sized:  # hash only once every size matched: truncation is found fast
        try:
            got = sha256_file(path)
        except OSError as e:
            problems.append(f"{rel}: unreadable ({e})")
            continue
        if got != want:
            problems.append(f"{rel}: contents changed (sha256 {got[:12]}..., expected {want[:12]}...)")
    return problems


# --------------------------------------------------------------------------------------------
# Atomic writes, locks, discarding
# --------------------------------------------------------------------------------------------


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    Writes a hidden temporary file in the same folder, flushes it to disk, then renames it over
    ``path`` (``os.replace`` is atomic on one file system). Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}{TMP_MARKER}{_unique_suffix()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def atomic_write_text(path: Path | str, text: str, encoding: str = "utf-8") -> Path:
    """``atomic_write_bytes`` for text."""
    return atomic_write_bytes(path, text.encode(encoding))


def lock_path(final: Path | str) -> Path:
    """The lock file that guards building ``final``: ``<final>.lock`` next to it."""
    final = Path(final)
    return final.parent / f"{final.name}{LOCK_SUFFIX}"


# errno values meaning "this file system does not do flock": fall back to no lock.
_NO_LOCK_ERRNOS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}


def _open_lock_file(path: Path):
    """Open (creating if needed) the lock file. On a shared disk another user may own it
    read-only: ``flock`` works on a read-only handle too, so fall back to that."""
    try:
        return open(path, "a+b")
    except PermissionError:
        if not path.is_file():
            raise
        return open(path, "rb")


@contextlib.contextmanager
def file_lock(path: Path | str, *, message: str | None = None) -> Iterator[bool]:
    """Hold an exclusive lock on the file ``path`` (created if needed) for the ``with`` block.

    Other processes entering ``file_lock`` on the same path wait until this one leaves; if
    ``message`` is given it is printed once when a process has to wait. The lock is released when
    the block ends or the process dies (the OS drops it), so a crash never leaves a stale lock.
    The lock file itself is left in place: deleting it while others wait would let two processes
    hold "the" lock at once.

    Yields ``True`` if a real lock is held, ``False`` where the platform or file system has none
    (Windows, some network disks); callers must then still be correct without it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield False
        return
    with _open_lock_file(path) as f:
        locked = False
        try:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                if message:
                    _say(message)
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                locked = True
        except OSError as e:
            if e.errno not in _NO_LOCK_ERRNOS:
                raise
        try:
            yield locked
        finally:
            if locked:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def discard_dir(path: Path | str) -> None:
    """Remove a folder (or file) so that no reader ever sees it half-deleted.

    It is first renamed to a hidden ``.<name>.damaged-...`` sibling (atomic), then deleted. A
    missing ``path`` is fine.
    """
    path = Path(path)
    aside = path.parent / f".{path.name}{DAMAGED_MARKER}{_unique_suffix()}"
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            aside.unlink()


def _remove_leftovers(final: Path) -> None:
    """Delete temporary/discarded siblings of ``final`` left by crashed processes (lock held)."""
    for marker in (TMP_MARKER, DAMAGED_MARKER):
        for p in final.parent.glob(f".{final.name}{marker}*"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()


# --------------------------------------------------------------------------------------------
# The one entry point
# --------------------------------------------------------------------------------------------


def build_or_load_dir(
    final: Path | str,
    build: Callable[[Path], None],
    *,
    name: str,
    rebuild: bool = False,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Return the verified cache folder ``final``, building it first if it is missing or damaged.

    build: ``build(tmp)`` fills the empty folder ``tmp`` (a private sibling of ``final``); it must
        not touch ``final`` itself. If it raises, nothing is published and the error propagates.
    name: what the folder holds, for messages ("ShapesWorld val n=12").
    rebuild: discard an existing copy even if it verifies, and build again. Use it only after a
        real failure (the files verified but could not be parsed): every caller that passes it
        rebuilds once.
    meta: stored in the manifest (see ``write_manifest``).

    An intact copy is returned without taking the lock. Otherwise the process takes
    ``file_lock(lock_path(final))``, checks again (another process may have just finished), and
    builds only if still needed. A damaged copy is reported with a printed message, set aside
    atomically and rebuilt. Returns ``final``.
    """
    final = Path(final)
    if not rebuild and not verify_manifest(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    wait = f"Waiting for another process that is building {name} ({final.name})..."
    with file_lock(lock_path(final), message=wait) as locked:
        if final.exists() or final.is_symlink():
            problems = verify_manifest(final)
            if not problems and not rebuild:
                return final  # built by another process while we waited
            if rebuild:
                _say(f"Rebuilding {name}: discarding the cached copy in {final}.")
            else:
                shown = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
                _say(f"The cached {name} in {final} is damaged ({shown}); rebuilding it.")
            discard_dir(final)
        if locked:
            _remove_leftovers(final)  # we hold the lock: any temp sibling belongs to a dead process
        tmp = final.parent / f".{final.name}{TMP_MARKER}{_unique_suffix()}"
        tmp.mkdir()
        try:
            build(tmp)
            write_manifest(tmp, meta=meta)
            try:
                os.replace(tmp, final)
            except OSError:
                # Only without a real lock: another process published first. Use its copy if sound.
                if verify_manifest(final):
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


__all__ = [
    "DAMAGED_MARKER",
    "LOCK_SUFFIX",
    "MANIFEST_NAME",
    "TMP_MARKER",
    "atomic_write_bytes",
    "atomic_write_text",
    "build_or_load_dir",
    "discard_dir",
    "file_lock",
    "lock_path",
    "read_manifest",
    "sha256_file",
    "verify_manifest",
    "write_manifest",
]

