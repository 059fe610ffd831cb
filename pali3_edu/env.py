"""Is this machine ready for the course? ``python -m pali3_edu.env`` says, and says how to fix it.

It reports Python; PyTorch and its accelerators (CUDA: device name, compute capability, memory,
native bf16; Apple MPS); the version of every package pali3-edu requires, read from the installed
package's own metadata (``importlib.metadata.requires("pali3-edu")``, so the list is the one pip
installed from ``pyproject.toml``); CPU threads; memory; the data folder (``data_dir()``, which
honours ``$PALI3_EDU_DATA``) and whether it can be written. Each problem comes with the command
that fixes it. Exit status 0 when everything the lessons need is there, 1 otherwise;
``--test`` also requires the test dependencies (``pip install -e ".[test]"``).

In a notebook (lesson 00 does this)::

    from pali3_edu.env import check_environment
    report = check_environment()
    print(report)        # the same table as the command line
    report.ok            # True when nothing the lessons need is missing

Helpers the lessons use:

- :func:`recommend_preset` — the training preset that fits this machine: ``tiny-cpu`` (CPU, MPS),
  ``colab-t4`` (a T4 or any GPU without bf16, or under 20 GiB), ``l4-a100`` (bf16, 20 GiB and
  more), ``h100`` (compute capability 9.0 and 70 GiB and more);
- :func:`amp_dtype_for` — ``"bf16"`` on CUDA with compute capability ≥ 8.0, ``"fp16"`` (with loss
  scaling) on older CUDA GPUs such as the T4, ``None`` (fp32) on CPU and MPS;
- :func:`warn_if_no_gpu` — one warning line when a GPU lesson runs without a GPU;
- :func:`use_data_folder` — put the caches somewhere else (on Colab: a Google Drive folder, so a new
  session finds the data sets and trained runs of the last one instead of training again);
- ``COLAB_INSTALL`` / ``COLAB_SETUP_CELL`` — how a notebook installs this release of the course on
  Colab (see below).

Installing on Colab. Colab brings its own torch, matplotlib, ipywidgets (7.x: its notebook front
end does not render ipywidgets 8), tqdm, Pillow and Jupyter. A plain ``pip install`` of the course
would "upgrade" some of them (ipywidgets to 8, a JupyterLab the page never uses), so a notebook
on Colab installs the course *without* its dependencies and then only what Colab lacks, the
``colab`` extra of ``pyproject.toml`` (:data:`COLAB_REQUIREMENTS`), pinned to the release tag
``v<version>`` of this package (:data:`COLAB_TAG`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import shutil
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pali3_edu import __version__

__all__ = [
    "COLAB_INSTALL",
    "COLAB_PACKAGE",
    "COLAB_REQUIREMENTS",
    "COLAB_SETUP_CELL",
    "COLAB_TAG",
    "DIST_NAME",
    "REPO_URL",
    "EnvReport",
    "GPUInfo",
    "PackageCheck",
    "amp_dtype_for",
    "check_environment",
    "git_commit",
    "main",
    "memory_bytes",
    "on_colab",
    "recommend_preset",
    "use_data_folder",
    "warn_if_no_gpu",
]

DIST_NAME = "pali3-edu"
REPO_URL = "https://github.com/pali3-edu/pali3-edu"
#: The git tag of this release; the notebooks of version X.Y.Z install ``vX.Y.Z`` on Colab.
COLAB_TAG = f"v{__version__}"
#: The pip requirement of this release, e.g. ``pali3-edu @ git+https://github.com/...@v0.2.0``.
COLAB_PACKAGE = f"{DIST_NAME} @ git+{REPO_URL}@{COLAB_TAG}"
#: What Colab lacks: the ``colab`` extra in pyproject.toml (tests/test_packaging.py keeps them equal).
COLAB_REQUIREMENTS = ("einops>=0.7", "sentencepiece>=0.2", "datasets>=2.18", "safetensors>=0.4")
#: The shell command (``!`` in a Colab cell) that installs this release on Colab.
COLAB_INSTALL = (f'pip install -q --no-deps "{COLAB_PACKAGE}" && pip install -q '
                 + " ".join(f'"{r}"' for r in COLAB_REQUIREMENTS))
#: The setup cell at the top of every lesson: nothing happens where the course is installed
#: (JupyterLab after ``pip install -e .``, CI); on Colab it installs this release and only what
#: Colab lacks; elsewhere (a bare Jupyter) the release with all its dependencies.
COLAB_SETUP_CELL = f'''\
try:
    import pali3_edu
except ImportError:  # not installed here (e.g. on Colab): install release {COLAB_TAG} of the course
    import importlib, subprocess, sys
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    package = "{COLAB_PACKAGE}"
    if "google.colab" in sys.modules:  # keep Colab's own torch and widgets; add what it lacks
        subprocess.check_call([*pip, "--no-deps", package])
        subprocess.check_call([*pip, {", ".join(f'"{r}"' for r in COLAB_REQUIREMENTS)}])
    else:
        subprocess.check_call([*pip, package])
    importlib.invalidate_caches()
    import pali3_edu
'''

#: On Colab these need not be installed at all (Colab is its own notebook front end).
NOT_NEEDED_ON_COLAB = frozenset({"jupyterlab"})
#: The extras whose packages the report lists (as optional, unless ``check_environment(test=True)``).
REPORTED_EXTRAS = ("test",)

#: Native bf16 needs an NVIDIA GPU of this compute capability (Ampere) or newer.
BF16_MIN_CAPABILITY = (8, 0)
_GIB = 1024**3
_REPO_ROOT = Path(__file__).resolve().parent.parent
_COLAB_ENV_VARS = ("COLAB_RELEASE_TAG", "COLAB_GPU")
_TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


# ---------------------------------------------------------------------------------------------
# Small facts about the machine
# ---------------------------------------------------------------------------------------------


def on_colab() -> bool:
    """True inside a Google Colab runtime (its kernel, or a ``!python ...`` started from it)."""
    return "google.colab" in sys.modules or any(v in os.environ for v in _COLAB_ENV_VARS)


def _in_checkout() -> bool:
    """True when this package is a source checkout (``pip install -e .``), not a plain install."""
    return (_REPO_ROOT / "pyproject.toml").exists()


def git_commit(root: str | os.PathLike[str] = _REPO_ROOT) -> str | None:
    """The commit a source checkout is at (12 hex digits), read from ``.git`` without running git;
    None outside a checkout or when it cannot be read."""
    git = Path(root) / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = Path(git.read_text().split(":", 1)[1].strip())
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head[:12] or None
        ref = head.split(":", 1)[1].strip()
        loose = git / ref
        if loose.is_file():
            return loose.read_text().strip()[:12] or None
        common = git
        if (git / "commondir").is_file():
            common = (git / (git / "commondir").read_text().strip()).resolve()
            if (common / ref).is_file():
                return (common / ref).read_text().strip()[:12] or None
        for line in (common / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split(" ", 1)[0][:12]
    except (OSError, IndexError):
        return None
    return None


def _pip() -> str:
    return "%pip install" if on_colab() else "python -m pip install"


def memory_bytes(meminfo: str | os.PathLike[str] = "/proc/meminfo") -> tuple[int | None, int | None]:
    """``(total, available)`` memory in bytes; ``None`` for what this system does not tell.

    Linux: ``MemTotal`` and ``MemAvailable`` from ``/proc/meminfo``; elsewhere ``os.sysconf``
    (macOS knows the total only; Windows neither).
    """
    total = available = None
    try:
        with open(meminfo, encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields = value.split()
                if key in ("MemTotal", "MemAvailable") and fields and fields[0].isdigit():
                    amount = int(fields[0]) * 1024  # /proc/meminfo counts kB
                    if key == "MemTotal":
                        total = amount
                    else:
                        available = amount
    except OSError:
        pass
    if total is None or available is None:
        sysconf = getattr(os, "sysconf", None)
        names = getattr(os, "sysconf_names", {})

        def pages(name: str) -> int | None:
            if sysconf is None or name not in names or "SC_PAGE_SIZE" not in names:
                return None
            try:
                n, size = sysconf(name), sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError):
                return None
            return n * size if n > 0 and size > 0 else None

        total = total if total is not None else pages("SC_PHYS_PAGES")
        available = available if available is not None else pages("SC_AVPHYS_PAGES")
    return total, available


def _torch() -> Any | None:
    try:
        import torch
    except ImportError:
        return None
    return torch


def _as_device(device: Any) -> Any:
    """``device`` (a ``torch.device`` or a name such as ``"cuda:1"``) as a ``torch.device``;
    ``None`` means the lessons' device, :func:`pali3_edu.utils.pick_device`."""
    import torch

    from pali3_edu.utils import pick_device

    if device is None:
        return pick_device()
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except RuntimeError as e:
            raise ValueError(f"{device!r} is not a device name: use 'cpu', 'cuda', 'cuda:1' or 'mps'.") from e
    else:
        raise TypeError(f"device must be a torch.device or a name like 'cuda', got {type(device).__name__}.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{device!r}: no CUDA GPU is available here. Ask for 'cpu' (or 'mps' on a Mac), "
                         "or leave device=None to use the device the lessons pick.")
    return dev


@dataclass(frozen=True)
class GPUInfo:
    """One CUDA device: its name, compute capability and memory."""

    index: int
    name: str
    capability: tuple[int, int]
    memory_bytes: int

    @property
    def bf16(self) -> bool:
        """Native bf16 (compute capability ≥ 8.0). A T4 (7.5) only emulates it, far slower."""
        return self.capability >= BF16_MIN_CAPABILITY

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / _GIB

    def describe(self) -> str:
        precision = "native bf16" if self.bf16 else "no native bf16: fp16 + loss scaling"
        return (f"{self.name} · compute capability {self.capability[0]}.{self.capability[1]} · "
                f"{self.memory_gib:.1f} GiB · {precision}")


def _gpu_info(torch: Any, index: int) -> GPUInfo:
    props = torch.cuda.get_device_properties(index)
    return GPUInfo(index=index, name=str(props.name), capability=(int(props.major), int(props.minor)),
                   memory_bytes=int(props.total_memory))


# ---------------------------------------------------------------------------------------------
# Presets and precision for a device
# ---------------------------------------------------------------------------------------------


def amp_dtype_for(device: Any) -> str | None:
    """The mixed-precision type to train with on ``device``: ``"bf16"``, ``"fp16"`` or ``None``.

    - CUDA with compute capability ≥ 8.0 (A100, L4, H100, RTX 30xx/40xx): ``"bf16"``;
    - older CUDA GPUs (T4 7.5, V100 7.0): ``"fp16"``, with loss scaling (the training loop's
      ``GradScaler``), because their bf16 is emulated and far slower;
    - CPU and Apple MPS: ``None`` (train in fp32; the course's CPU presets are small).

    ``device`` is a ``torch.device`` or a name (``"cuda"``, ``"cuda:1"``, ``"cpu"``, ``"mps"``); the
    result is what ``TrainConfig(amp_dtype=...)`` takes.
    """
    if device is None:
        raise TypeError("amp_dtype_for needs a device, e.g. amp_dtype_for(pick_device()).")
    dev = _as_device(device)
    if dev.type != "cuda":
        return None
    import torch

    capability = tuple(torch.cuda.get_device_capability(dev))
    return "bf16" if capability >= BF16_MIN_CAPABILITY else "fp16"


def recommend_preset(device: Any = None) -> str:
    """The course's training preset that fits ``device`` (default: the device the lessons use).

    ==============================================================  =============
    device                                                          preset
    ==============================================================  =============
    CPU, Apple MPS                                                  ``tiny-cpu``
    CUDA without native bf16 (T4, V100), or under 20 GiB            ``colab-t4``
    CUDA with bf16 and 20 GiB or more (L4, A10, A100, RTX 3090/4090)  ``l4-a100``
    CUDA of compute capability ≥ 9.0 with 70 GiB or more (H100, H200)  ``h100``
    ==============================================================  =============

    The GPU presets are those of the GPU-scale run (lesson 12); every preset trains in the
    precision :func:`amp_dtype_for` names.
    """
    dev = _as_device(device)
    if dev.type != "cuda":
        return "tiny-cpu"
    import torch

    gpu = _gpu_info(torch, dev.index if dev.index is not None else torch.cuda.current_device())
    if gpu.capability >= (9, 0) and gpu.memory_gib >= 70:
        return "h100"
    if gpu.bf16 and gpu.memory_gib >= 20:
        return "l4-a100"
    return "colab-t4"


def warn_if_no_gpu(lesson: str | int) -> bool:
    """Print a warning when ``lesson`` (a GPU lesson) is about to run without a CUDA GPU.

    Returns True when it warned. Nothing is printed when the lessons' device
    (:func:`pali3_edu.utils.pick_device`) is a CUDA GPU.
    """
    if not isinstance(lesson, (str, int)) or isinstance(lesson, bool) or str(lesson).strip() == "":
        raise TypeError(f"lesson must name the lesson, e.g. warn_if_no_gpu('12'), got {lesson!r}.")
    torch = _torch()
    if torch is None:
        raise ImportError("PyTorch is not installed: run `python -m pali3_edu.env` to see how to install it.")
    from pali3_edu.utils import pick_device

    device = pick_device()
    if device.type == "cuda":
        return False
    if torch.cuda.is_available():
        why = f"a CUDA GPU is here, but PALI3_DEVICE={os.environ.get('PALI3_DEVICE', '')!r} keeps the lessons off it"
    else:
        why = "no CUDA GPU is visible"
    where = "Apple's MPS" if device.type == "mps" else "the CPU"
    colab = (" On Colab: Runtime → Change runtime type → a GPU, then run the notebook again from the top."
             if on_colab() else "")
    print(f"⚠️  Lesson {lesson} is written for a GPU and {why}. It still runs on {where}, slowly; "
          f"keep the 'tiny-cpu' preset (what recommend_preset() returns here).{colab}")
    return True


def use_data_folder(path: str | os.PathLike[str]) -> Path:
    """Keep the course's caches (data sets, tokenizer, trained runs) in ``path`` from now on.

    Sets ``$PALI3_EDU_DATA`` for this process (and the programs it starts), so every later
    :func:`pali3_edu.utils.data_dir` call uses it. On Colab, point it at Google Drive so a new
    session finds what the last one built instead of training again::

        from google.colab import drive; drive.mount("/content/drive")
        from pali3_edu.env import use_data_folder
        use_data_folder("/content/drive/MyDrive/pali3_edu_data")

    The folder itself is created if needed, but its parent must exist: a typo, or a Drive that is
    not mounted, raises ``FileNotFoundError`` instead of silently filling a new local folder that
    disappears with the session. A folder that cannot be written raises
    ``DataDirNotWritableError``. Either way ``$PALI3_EDU_DATA`` is left as it was. Returns the
    folder as an absolute ``Path``.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a folder name (str or Path), got {type(path).__name__}.")
    from pali3_edu import utils

    if str(os.fspath(path)).strip() == "":
        raise ValueError("path is empty: give the folder for the course's caches.")
    folder = Path(path).expanduser()
    folder = folder.resolve() if not folder.is_absolute() else folder
    if not folder.parent.is_dir():
        hint = ""
        if folder.parts[:3] == ("/", "content", "drive"):
            hint = (" Mount Google Drive first: `from google.colab import drive; "
                    "drive.mount('/content/drive')`.")
        raise FileNotFoundError(
            f"Cannot use {folder} as the data folder: its parent {folder.parent} does not exist.{hint} "
            "use_data_folder creates only the last folder of the path, so that a typo or an unmounted "
            "drive is caught instead of filling a new local folder."
        )
    utils.check_writable(folder)
    os.environ[utils.DATA_ENV_VAR] = str(folder)
    print(f"📁 The course's caches (data sets, tokenizer, trained runs) now live in {folder}")
    return folder


# ---------------------------------------------------------------------------------------------
# The package list, from the installed distribution's metadata
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackageCheck:
    """One requirement of pali3-edu and what is installed for it."""

    name: str  # the distribution name as written in the requirement, e.g. "pillow"
    requirement: str  # e.g. "pillow>=10.1" (markers left out)
    group: str  # "required", or the name of the extra ("test")
    installed: str | None  # the installed version, None when missing
    satisfied: bool  # installed, and the version fits the requirement
    needed: bool  # whether a missing or unfitting version is a problem
    note: str = ""  # e.g. "Colab's own version" or "not needed on Colab"

    @property
    def mark(self) -> str:
        if self.satisfied or (self.installed is not None and not self.needed):
            return "✅"
        return "❌" if self.needed else "➖"

    def fix(self) -> str:
        """The command that installs this requirement."""
        if self.name == "torch":
            return (f'{_pip()} "{self.requirement}"  (no NVIDIA GPU? the much smaller CPU build: '
                    f"{_pip()} torch --index-url {_TORCH_CPU_INDEX})")
        if self.group != "required" and _in_checkout():
            return f'{_pip()} -e ".[{self.group}]"  (in the repository root)'
        return f'{_pip()} "{self.requirement}"'

    def problem(self) -> str:
        if self.installed is None:
            return f"{self.name} is not installed: {self.fix()}"
        return f"{self.name} {self.installed} does not fit {self.requirement}: {self.fix()}"


def _requirement_list() -> list[tuple[Any, str]]:
    """``(packaging Requirement, group)`` for every requirement of the installed pali3-edu that
    applies here; raises ``PackageNotFoundError`` when pali3-edu is not installed."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    texts = metadata.requires(DIST_NAME) or []
    extras = metadata.metadata(DIST_NAME).get_all("Provides-Extra") or []
    own = canonicalize_name(DIST_NAME)
    out = []
    for text in texts:
        req = Requirement(text)
        if canonicalize_name(req.name) == own:
            continue  # "pali3-edu[test]" inside the dev extra
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.append((req, "required"))
            continue
        group = next((e for e in extras if req.marker.evaluate({"extra": e})), None)
        if group is not None:  # None: not for this Python / platform (e.g. tomli on 3.11+)
            out.append((req, group))
    return out


def _check_packages(test: bool, colab: bool) -> tuple[list[PackageCheck], list[str]]:
    try:
        reqs = _requirement_list()
    except metadata.PackageNotFoundError:
        where = ("`python -m pip install -e .` in the repository root" if _in_checkout()
                 else f"`{_pip()} {COLAB_PACKAGE!r}`")
        if colab:
            where = f"`!{COLAB_INSTALL}`"
        return [], [f"{DIST_NAME} is not installed in this Python ({sys.executable}): run {where}."]
    except ImportError:  # packaging is missing: it is one of our requirements
        return [], [(f"the package `packaging` is missing, needed to read the requirements: "
                     f"{_pip()} packaging, then run this check again.")]
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    colab_own = {canonicalize_name(Requirement(r).name) for r in COLAB_REQUIREMENTS}
    not_needed_on_colab = {canonicalize_name(n) for n in NOT_NEEDED_ON_COLAB}
    checks, problems = [], []
    for req, group in reqs:
        if group != "required" and group not in REPORTED_EXTRAS:
            continue  # e.g. the dev extra (ruff)
        name = canonicalize_name(req.name)
        try:
            installed: str | None = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            installed = None
        spec = f"{req.name}{req.specifier}"
        satisfied = installed is not None and req.specifier.contains(installed, prereleases=True)
        needed = group == "required" or (test and group in REPORTED_EXTRAS)
        note = ""
        if colab and group == "required" and name not in colab_own:
            if name in not_needed_on_colab:
                needed, note = False, "not needed on Colab"
            elif installed is not None and not satisfied:
                needed, note = False, "Colab's own version, kept"
        check = PackageCheck(req.name, spec, group, installed, satisfied, needed, note)
        checks.append(check)
        if needed and not satisfied:
            problems.append(check.problem())
    return checks, problems


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def _gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / _GIB:.1f} GiB"


@dataclass
class EnvReport:
    """What :func:`check_environment` found. ``print(report)`` shows it; ``report.ok`` is True when
    nothing the lessons need is missing; ``report.problems`` lists each fault with its fix."""

    python_version: str
    python_executable: str
    platform: str
    pali3_edu_version: str
    pali3_edu_location: str
    on_colab: bool
    git_commit: str | None = None  # the commit of a source checkout
    torch_version: str | None = None
    cuda_version: str | None = None  # the CUDA version PyTorch was built with (None: a CPU build)
    cuda_available: bool = False
    gpus: list[GPUInfo] = field(default_factory=list)
    mps_available: bool = False
    device: str | None = None  # what the lessons use (pick_device)
    device_override: str | None = None  # $PALI3_DEVICE
    preset: str | None = None  # recommend_preset()
    amp_dtype: str | None = None  # amp_dtype_for(device)
    cpu_count: int | None = None
    torch_threads: int | None = None
    memory_total: int | None = None
    memory_available: int | None = None
    data_folder: str | None = None
    data_folder_from_env: bool = False
    data_folder_writable: bool = False
    data_folder_free: int | None = None
    data_folder_error: str | None = None  # why the data folder cannot be used
    packages: list[PackageCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    test: bool = False  # whether the test extras were required

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        """The report as text (what ``python -m pali3_edu.env`` prints)."""
        lines = [f"pali3-edu {self.pali3_edu_version} — environment check", ""]

        def row(label: str, text: str) -> None:
            lines.append(f"  {label:<13} {text}")

        row("Python", f"{self.python_version} ({self.python_executable})")
        row("system", self.platform + ("  · Google Colab" if self.on_colab else ""))
        commit = f" (git {self.git_commit})" if self.git_commit else ""
        row("pali3_edu", f"{self.pali3_edu_location}{commit}")
        if self.torch_version is None:
            row("PyTorch", "not installed")
        else:
            row("PyTorch", f"{self.torch_version} (CUDA build: {self.cuda_version or 'none, CPU only'})")
            row("CUDA", f"{len(self.gpus)} GPU(s)" if self.cuda_available else "not available")
            for gpu in self.gpus:
                row(f"  cuda:{gpu.index}", gpu.describe())
            row("MPS (Apple)", "available" if self.mps_available else "not available")
            chosen = f"{self.device}"
            if self.device_override:
                chosen += f" (from PALI3_DEVICE={self.device_override})"
            precision = {"bf16": "bf16", "fp16": "fp16 + loss scaling", None: "none (fp32)"}[self.amp_dtype]
            row("lessons use", f"{chosen} → preset '{self.preset}', mixed precision: {precision}")
        threads = f"{self.cpu_count} cores" if self.cpu_count else "unknown cores"
        if self.torch_threads is not None:
            threads += f", PyTorch uses {self.torch_threads} threads"
        row("CPU", threads)
        row("memory", f"{_gib(self.memory_total)} total, {_gib(self.memory_available)} available")
        if self.data_folder is not None:
            source = " (from $PALI3_EDU_DATA)" if self.data_folder_from_env else ""
            state = (f"writable, {_gib(self.data_folder_free)} free" if self.data_folder_writable
                     else "NOT writable")
            row("data folder", f"{self.data_folder}{source} — {state}")
        elif self.data_folder_error is not None:
            row("data folder", "NOT writable (see below)")
        groups: dict[str, list[PackageCheck]] = {}
        for check in self.packages:
            groups.setdefault(check.group, []).append(check)
        for group, checks in groups.items():
            if group == "required":
                title = f"Packages {DIST_NAME} requires"
            else:
                title = f'Packages for the tests (pip install -e ".[{group}]")'
                title += "" if self.test else ", optional"
            lines += ["", title]
            width = max(len(c.name) for c in checks)
            for c in checks:
                version = c.installed or "missing"
                note = f"  ({c.note})" if c.note else ""
                lines.append(f"  {c.mark} {c.name:<{width}}  {version:<14} {c.requirement}{note}")
        lines.append("")
        if self.ok:
            lines.append("✅ Everything the lessons need is here.")
        else:
            n = len(self.problems)
            lines.append(f"❌ {n} thing{'s' if n > 1 else ''} to fix:")
            lines += [f"  {i}. {p}" for i, p in enumerate(self.problems, 1)]
            if any("is not installed" in p or "does not fit" in p for p in self.problems):
                if self.on_colab:
                    lines.append(f"  Or install this release with what Colab lacks: !{COLAB_INSTALL}")
                elif _in_checkout():
                    extra = '".[test]"' if self.test else "."
                    lines.append(f"  Or install everything at once, in the repository root: "
                                 f"python -m pip install -e {extra}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def check_environment(test: bool = False) -> EnvReport:
    """Look at this machine and return an :class:`EnvReport`; nothing is installed or changed
    (except that the data folder is created if it does not exist yet, to prove it is writable).

    ``test=True`` also counts the test dependencies (``pip install -e ".[test]"``) as needed.
    """
    colab = on_colab()
    package_dir = Path(__file__).resolve().parent
    report = EnvReport(
        python_version=platform.python_version(),
        python_executable=sys.executable,
        platform=platform.platform(),
        pali3_edu_version=__version__,
        pali3_edu_location=str(package_dir),
        on_colab=colab,
        git_commit=git_commit() if _in_checkout() else None,
        test=test,
    )
    report.packages, problems = _check_packages(test, colab)
    report.problems.extend(problems)
    report.cpu_count = os.cpu_count()
    report.memory_total, report.memory_available = memory_bytes()

    torch = _torch()
    if torch is not None:
        report.torch_version = str(torch.__version__)
        report.cuda_version = torch.version.cuda
        report.torch_threads = torch.get_num_threads()
        mps = getattr(torch.backends, "mps", None)
        report.mps_available = bool(mps is not None and mps.is_available())
        try:
            report.cuda_available = bool(torch.cuda.is_available())
            if report.cuda_available:
                report.gpus = [_gpu_info(torch, i) for i in range(torch.cuda.device_count())]
        except Exception as e:  # noqa: BLE001 - a broken driver raises here, not in is_available
            report.problems.append(f"CUDA reports an error ({type(e).__name__}: {e}): check the NVIDIA "
                                   "driver (`nvidia-smi`), or set PALI3_DEVICE=cpu to run on the CPU.")
            report.cuda_available = False
        report.device_override = os.environ.get("PALI3_DEVICE") or None
        try:
            device = _as_device(None)
            report.device = str(device)
            report.preset = recommend_preset(device)
            report.amp_dtype = amp_dtype_for(device)
        except Exception as e:  # noqa: BLE001 - e.g. PALI3_DEVICE names a device that is not here
            report.problems.append(f"the lessons' device does not work ({type(e).__name__}: {e}); "
                                   "unset PALI3_DEVICE or set it to 'cpu'.")
    elif not any(c.name == "torch" for c in report.packages):
        report.problems.append(f"PyTorch is not installed: {_pip()} torch (CPU only: "
                               f"{_pip()} torch --index-url {_TORCH_CPU_INDEX})")

    report.data_folder_from_env = bool(os.environ.get("PALI3_EDU_DATA"))
    try:
        utils = importlib.import_module("pali3_edu.utils")
        folder = utils.data_dir()
    except PermissionError as e:  # DataDirNotWritableError: its message names the folder and the fix
        report.data_folder_error = str(e)
        report.problems.append(str(e))
    except ImportError:  # utils needs torch and numpy, reported above
        pass
    else:
        report.data_folder = str(folder)
        report.data_folder_writable = True
        try:
            report.data_folder_free = shutil.disk_usage(folder).free
        except OSError:
            pass
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m pali3_edu.env [--test]``: print the report; 0 if nothing is missing, else 1."""
    parser = argparse.ArgumentParser(
        prog="python -m pali3_edu.env",
        description="Check that this machine can run the pali3-edu course, and say how to fix what is missing.",
    )
    parser.add_argument("--test", action="store_true",
                        help='also require the test dependencies (pip install -e ".[test]")')
    args = parser.parse_args(argv)
    report = check_environment(test=args.test)
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
