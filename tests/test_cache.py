"""pali3_edu.cache and utils.check_writable: manifests, damaged caches, locks, concurrent builds.

Each test reproduces a fault the cache machinery must survive: truncated or bit-flipped files,
a crash half-way through a build, several processes building the same folder at once, no OS lock
(Windows), a data folder that cannot be written.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path

import pytest

from pali3_edu import cache
from pali3_edu.cache import (
    MANIFEST_NAME,
    atomic_write_bytes,
    build_or_load_dir,
    file_lock,
    lock_path,
    verify_manifest,
    write_manifest,
)
from pali3_edu.utils import DataDirNotWritableError, check_writable, data_dir


def _fill(folder: Path, payload: bytes = b"hello world" * 100) -> None:
    (folder / "a.bin").write_bytes(payload)
    (folder / "sub").mkdir()
    (folder / "sub" / "b.txt").write_text("two")


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


# --------------------------------------------------------------------------------------------
# Manifests
# --------------------------------------------------------------------------------------------


def test_manifest_lists_every_file_and_verifies(tmp_path):
    _fill(tmp_path)
    write_manifest(tmp_path, meta={"recipe": "demo"})
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert sorted(manifest["files"]) == ["a.bin", "sub/b.txt"]
    assert manifest["files"]["a.bin"]["size"] == 1100 and manifest["meta"] == {"recipe": "demo"}
    assert verify_manifest(tmp_path) == []
    (tmp_path / "cache-123.arrow").write_bytes(b"written later by datasets.map")  # not listed: fine
    assert verify_manifest(tmp_path) == []


def test_verify_finds_truncation_flipped_bytes_missing_files_and_no_manifest(tmp_path):
    _fill(tmp_path)
    missing = f"{MANIFEST_NAME} is missing (an interrupted build, or a cache from an older version)"
    assert verify_manifest(tmp_path) == [missing]
    write_manifest(tmp_path)
    data = (tmp_path / "a.bin").read_bytes()
    (tmp_path / "a.bin").write_bytes(data[:-10])  # truncated
    assert any("a.bin" in p and "truncated" in p for p in verify_manifest(tmp_path))
    flipped = bytearray(data)
    flipped[100:164] = bytes(b ^ 0xFF for b in flipped[100:164])  # 64 flipped bytes, same size
    (tmp_path / "a.bin").write_bytes(bytes(flipped))
    assert any("a.bin" in p and "contents changed" in p for p in verify_manifest(tmp_path))
    (tmp_path / "a.bin").write_bytes(data)
    (tmp_path / "sub" / "b.txt").unlink()
    assert verify_manifest(tmp_path) == ["sub/b.txt: missing"]
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    assert "unreadable" in verify_manifest(tmp_path)[0]
    assert "missing or not a folder" in verify_manifest(tmp_path / "nope")[0]


# --------------------------------------------------------------------------------------------
# build_or_load_dir in one process
# --------------------------------------------------------------------------------------------


def test_build_once_then_load_without_building(tmp_path):
    calls = []

    def build(tmp: Path) -> None:
        calls.append(tmp)
        assert tmp.is_dir() and not list(tmp.iterdir()) and tmp.parent == tmp_path
        _fill(tmp)

    final = tmp_path / "thing"
    assert build_or_load_dir(final, build, name="demo") == final
    assert build_or_load_dir(final, build, name="demo") == final
    assert len(calls) == 1 and verify_manifest(final) == []
    assert _siblings(final) == ["thing", "thing.lock"]  # no temporary folders left behind


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete_manifest", "empty_folder", "file"])
def test_damaged_copy_is_rebuilt_with_a_message(tmp_path, capsys, damage):
    final = tmp_path / "thing"
    build_or_load_dir(final, _fill, name="demo data")
    if damage == "truncate":
        (final / "a.bin").write_bytes((final / "a.bin").read_bytes()[:7])
    elif damage == "flip":
        data = bytearray((final / "a.bin").read_bytes())
        data[:64] = bytes(b ^ 0x5A for b in data[:64])
        (final / "a.bin").write_bytes(bytes(data))
    elif damage == "delete_manifest":
        (final / MANIFEST_NAME).unlink()
    elif damage == "empty_folder":  # what a crashed old-style build left behind
        for p in sorted(final.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
    else:  # a plain file where the folder should be
        import shutil

        shutil.rmtree(final)
        final.write_text("oops")
    capsys.readouterr()
    build_or_load_dir(final, _fill, name="demo data")
    err = capsys.readouterr().err
    assert "The cached demo data" in err and "damaged" in err and "rebuilding" in err
    assert verify_manifest(final) == [] and (final / "a.bin").read_bytes() == b"hello world" * 100
    assert _siblings(final) == ["thing", "thing.lock"]


def test_rebuild_true_discards_an_intact_copy(tmp_path, capsys):
    final = tmp_path / "thing"
    build_or_load_dir(final, lambda t: _fill(t, b"old"), name="demo")
    build_or_load_dir(final, lambda t: _fill(t, b"new"), name="demo", rebuild=True)
    assert (final / "a.bin").read_bytes() == b"new" and "Rebuilding demo" in capsys.readouterr().err


def test_failed_build_publishes_nothing_and_releases_the_lock(tmp_path):
    final = tmp_path / "thing"

    def crash(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("out of disk")

    with pytest.raises(RuntimeError, match="out of disk"):
        build_or_load_dir(final, crash, name="demo")
    assert not final.exists() and _siblings(final) == ["thing.lock"]
    build_or_load_dir(final, _fill, name="demo")  # the lock was released: a retry succeeds
    assert verify_manifest(final) == []


def test_leftovers_of_a_killed_build_are_removed(tmp_path):
    final = tmp_path / "thing"
    stale = tmp_path / f".thing{cache.TMP_MARKER}999-dead"  # a process killed mid-build
    stale.mkdir()
    (stale / "half.arrow").write_bytes(b"x" * 10)
    build_or_load_dir(final, _fill, name="demo")
    assert _siblings(final) == ["thing", "thing.lock"]


def test_without_os_locks_the_atomic_rename_still_keeps_one_good_copy(tmp_path, monkeypatch):
    """Windows has no fcntl: two processes may both build; the second rename fails, first wins."""
    monkeypatch.setattr(cache, "fcntl", None)
    final = tmp_path / "thing"
    with file_lock(lock_path(final)) as locked:
        assert locked is False

    def build_while_another_process_publishes(tmp: Path) -> None:
        _fill(tmp, b"mine")
        other = tmp_path / ".other-process-tmp"  # the other process finishes first
        other.mkdir()
        _fill(other, b"theirs")
        write_manifest(other)
        os.replace(other, final)

    assert build_or_load_dir(final, build_while_another_process_publishes, name="demo") == final
    assert (final / "a.bin").read_bytes() == b"theirs" and verify_manifest(final) == []
    assert [p for p in _siblings(final) if cache.TMP_MARKER in p] == []


# --------------------------------------------------------------------------------------------
# Locks and atomic writes
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(cache.fcntl is None, reason="no fcntl on this platform (Windows)")
def test_file_lock_makes_a_second_holder_wait(tmp_path, capsys):
    lock = tmp_path / "x.lock"
    events: list[str] = []

    def second() -> None:
        with file_lock(lock, message="waiting for the first holder"):
            events.append("second in")

    with file_lock(lock) as locked:
        assert locked is True
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)  # ample time for the thread to enter if it could (it must not)
        events.append("first out")
    thread.join(timeout=10)
    assert events == ["first out", "second in"]
    assert "waiting for the first holder" in capsys.readouterr().err


def test_atomic_write_bytes_replaces_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "deep" / "x.json"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two" and os.listdir(path.parent) == ["x.json"]
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"two" and os.listdir(path.parent) == ["x.json"]


# --------------------------------------------------------------------------------------------
# Several processes at once
# --------------------------------------------------------------------------------------------


def _slow_build_worker(final: str, log: str, barrier) -> None:
    """Child process: wait for the others, then build-or-load the same folder."""

    def build(tmp: Path) -> None:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # long enough that every process arrives while this one builds
        _fill(tmp, b"built once")

    barrier.wait(timeout=120)
    out = build_or_load_dir(Path(final), build, name="shared demo")
    assert verify_manifest(out) == [] and (out / "a.bin").read_bytes() == b"built once"


def test_four_processes_build_the_same_folder_once(tmp_path):
    ctx = mp.get_context("spawn")
    final, log = tmp_path / "cache" / "shared", tmp_path / "builds.log"
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_slow_build_worker, args=(str(final), str(log), barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    builders = log.read_text().split()
    assert len(builders) == 1 if cache.fcntl is not None else len(builders) >= 1
    assert _siblings(final) == ["shared", "shared.lock"]


# --------------------------------------------------------------------------------------------
# A data folder that cannot be written
# --------------------------------------------------------------------------------------------


def test_unwritable_data_folder_is_reported_with_the_fix(tmp_path, monkeypatch):
    # chmod does not stop root, so make the path go *through a regular file*: never creatable.
    (tmp_path / "afile").write_text("I am a file, not a folder")
    bad = tmp_path / "afile" / "data"
    monkeypatch.setenv("PALI3_EDU_DATA", str(bad))
    with pytest.raises(DataDirNotWritableError, match="set PALI3_EDU_DATA to a folder you can write|"
                                                      "Set PALI3_EDU_DATA to a folder you can write") as e:
        data_dir("shapesworld")
    assert str(bad) in str(e.value) and isinstance(e.value, PermissionError)
    with pytest.raises(DataDirNotWritableError, match="PALI3_EDU_DATA"):
        check_writable(bad)
    monkeypatch.setenv("PALI3_EDU_DATA", str(tmp_path / "good"))
    assert data_dir("x") == tmp_path / "good" / "x" and (tmp_path / "good" / "x").is_dir()
    assert os.listdir(tmp_path / "good" / "x") == []  # the probe file is gone


def test_data_dir_recreates_a_folder_deleted_after_the_first_check(tmp_path, monkeypatch):
    monkeypatch.setenv("PALI3_EDU_DATA", str(tmp_path / "d"))
    first = data_dir("runs")
    first.rmdir()
    assert data_dir("runs").is_dir()


@pytest.mark.skipif(cache.fcntl is None, reason="no fcntl on this platform (Windows)")
def test_lock_file_owned_read_only_by_another_user_still_locks(tmp_path, monkeypatch):
    """Classroom on a shared disk: the .lock file was created by someone else (mode 0644)."""
    lock = tmp_path / "x.lock"
    lock.write_bytes(b"")
    real_open = open

    def open_as_other_user(path, mode="r", *args, **kwargs):
        if Path(path) == lock and any(c in mode for c in "wa+"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", open_as_other_user)
    with file_lock(lock) as locked:
        assert locked is True
