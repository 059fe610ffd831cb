"""The environment check (pali3_edu.env). No GPU here: CUDA devices are faked by monkeypatching."""

from __future__ import annotations

import builtins
import subprocess
import sys
import types
from importlib import metadata

import pytest
import torch

from pali3_edu import env, utils
from pali3_edu.utils import DataDirNotWritableError, data_dir

GIB = 1024**3

GOOD_REQUIRES = [
    "torch>=2.3",
    "einops>=0.7",
    "ipywidgets>=8.0",
    "jupyterlab>=4.0",
    'pytest>=8.0; extra == "test"',
    'tomli>=2.0; python_version < "3.0" and extra == "test"',  # never applies
    'hypothesis>=6.100; python_version >= "3.0" and extra == "test"',  # always applies
    'einops>=0.7; extra == "colab"',
    'pali3-edu[test]; extra == "dev"',
    'ruff>=0.5; extra == "dev"',
]
GOOD_VERSIONS = {"torch": "2.13.0+cpu", "einops": "0.8.0", "ipywidgets": "8.1.0", "jupyterlab": "4.2.0",
                 "pytest": "8.3.0", "hypothesis": "6.100.0", "ruff": "0.5.0"}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch, tmp_path):
    """No Colab, no device override, caches in a temporary folder (restored after each test)."""
    for var in ("COLAB_RELEASE_TAG", "COLAB_GPU", "PALI3_DEVICE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setenv(utils.DATA_ENV_VAR, str(tmp_path / "data"))


def fake_distribution(monkeypatch, requires=GOOD_REQUIRES, versions=GOOD_VERSIONS, installed=True):
    """Make importlib.metadata describe a pali3-edu with ``requires`` and packages at ``versions``."""
    extras = ["test", "colab", "dev"]

    def fake_requires(name):
        if name != env.DIST_NAME or not installed:
            raise metadata.PackageNotFoundError(name)
        return list(requires)

    def fake_metadata(name):
        if name != env.DIST_NAME or not installed:
            raise metadata.PackageNotFoundError(name)
        return types.SimpleNamespace(get_all=lambda key: extras if key == "Provides-Extra" else None)

    def fake_version(name):
        if name not in versions:
            raise metadata.PackageNotFoundError(name)
        return versions[name]

    monkeypatch.setattr(metadata, "requires", fake_requires)
    monkeypatch.setattr(metadata, "metadata", fake_metadata)
    monkeypatch.setattr(metadata, "version", fake_version)


def fake_gpu(monkeypatch, name="Tesla T4", capability=(7, 5), memory_gib=15.0):
    props = types.SimpleNamespace(name=name, major=capability[0], minor=capability[1],
                                  total_memory=int(memory_gib * GIB))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# ---------------------------------------------------------------------------------------------
# amp_dtype_for, recommend_preset, warn_if_no_gpu
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("capability", "want"), [((7, 5), "fp16"), ((7, 0), "fp16"), ((8, 0), "bf16"),
                                                  ((8, 9), "bf16"), ((9, 0), "bf16")])
def test_amp_dtype_on_cuda_follows_the_compute_capability(monkeypatch, capability, want):
    fake_gpu(monkeypatch, capability=capability)
    assert env.amp_dtype_for("cuda") == want
    assert env.amp_dtype_for(torch.device("cuda", 0)) == want


def test_amp_dtype_is_fp32_on_cpu_and_mps():
    assert env.amp_dtype_for("cpu") is None
    assert env.amp_dtype_for(torch.device("cpu")) is None
    assert env.amp_dtype_for("mps") is None


def test_amp_dtype_rejects_bad_devices(monkeypatch):
    no_gpu(monkeypatch)
    with pytest.raises(TypeError, match="needs a device"):
        env.amp_dtype_for(None)
    with pytest.raises(TypeError, match="torch.device or a name"):
        env.amp_dtype_for(0)
    with pytest.raises(ValueError, match="not a device name"):
        env.amp_dtype_for("gpu")
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        env.amp_dtype_for("cuda")


@pytest.mark.parametrize(
    ("name", "capability", "memory_gib", "want"),
    [
        ("Tesla T4", (7, 5), 14.7, "colab-t4"),
        ("Tesla V100-SXM2-32GB", (7, 0), 31.7, "colab-t4"),  # no bf16
        ("NVIDIA GeForce RTX 3060", (8, 6), 11.8, "colab-t4"),  # bf16, but small
        ("NVIDIA L4", (8, 9), 22.0, "l4-a100"),
        ("NVIDIA A100-SXM4-80GB", (8, 0), 79.2, "l4-a100"),
        ("NVIDIA GeForce RTX 5090", (12, 0), 31.4, "l4-a100"),  # new, but 32 GB
        ("NVIDIA H100 80GB HBM3", (9, 0), 79.1, "h100"),
        ("NVIDIA H200", (9, 0), 139.8, "h100"),
    ],
)
def test_recommend_preset_on_gpus(monkeypatch, name, capability, memory_gib, want):
    fake_gpu(monkeypatch, name, capability, memory_gib)
    assert env.recommend_preset() == want  # the lessons' device: the (fake) GPU
    assert env.recommend_preset("cuda:0") == want


def test_recommend_preset_without_a_gpu(monkeypatch):
    no_gpu(monkeypatch)
    assert env.recommend_preset() == "tiny-cpu"
    assert env.recommend_preset("cpu") == "tiny-cpu"
    assert env.recommend_preset("mps") == "tiny-cpu"


def test_recommend_preset_respects_the_device_override(monkeypatch):
    fake_gpu(monkeypatch, "NVIDIA H100", (9, 0), 80)
    monkeypatch.setenv("PALI3_DEVICE", "cpu")
    assert env.recommend_preset() == "tiny-cpu"


def test_recommended_gpu_presets_exist():
    scale = pytest.importorskip("pali3_edu.recipes.scale")
    for preset in ("colab-t4", "l4-a100", "h100"):
        assert preset in scale.SCALE_PRESETS


def test_warn_if_no_gpu(monkeypatch, capsys):
    no_gpu(monkeypatch)
    assert env.warn_if_no_gpu("12") is True
    out = capsys.readouterr().out
    assert "Lesson 12 is written for a GPU" in out and "no CUDA GPU is visible" in out and "tiny-cpu" in out
    assert "Colab" not in out

    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab")
    assert env.warn_if_no_gpu(12) is True
    assert "Runtime → Change runtime type" in capsys.readouterr().out


def test_warn_if_no_gpu_is_silent_on_a_gpu(monkeypatch, capsys):
    fake_gpu(monkeypatch)
    assert env.warn_if_no_gpu("12") is False
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("PALI3_DEVICE", "cpu")  # a GPU is here but the lessons are kept off it
    assert env.warn_if_no_gpu("12") is True
    assert "PALI3_DEVICE='cpu'" in capsys.readouterr().out


@pytest.mark.parametrize("lesson", [None, "", True, 1.5])
def test_warn_if_no_gpu_needs_a_lesson(lesson):
    with pytest.raises(TypeError, match="name the lesson"):
        env.warn_if_no_gpu(lesson)


# ---------------------------------------------------------------------------------------------
# use_data_folder
# ---------------------------------------------------------------------------------------------


def test_use_data_folder_moves_the_caches(tmp_path, monkeypatch, capsys):
    drive = tmp_path / "MyDrive"
    drive.mkdir()
    folder = env.use_data_folder(drive / "pali3_edu_data")
    assert folder == drive / "pali3_edu_data" and folder.is_dir()
    assert data_dir() == folder
    assert data_dir("runs") == folder / "runs"
    assert "now live in" in capsys.readouterr().out

    monkeypatch.chdir(tmp_path)
    assert env.use_data_folder("relative") == tmp_path / "relative"  # absolute from now on
    monkeypatch.chdir(drive)
    assert data_dir() == tmp_path / "relative"


def test_use_data_folder_needs_an_existing_parent(tmp_path):
    before = data_dir()
    with pytest.raises(FileNotFoundError, match="parent .*does not exist"):
        env.use_data_folder(tmp_path / "typo" / "pali3_edu_data")
    assert not (tmp_path / "typo").exists()
    assert data_dir() == before


def test_use_data_folder_on_an_unmounted_drive_says_mount_it():
    with pytest.raises(FileNotFoundError, match=r"drive\.mount\('/content/drive'\)"):
        env.use_data_folder("/content/drive/MyDrive/pali3_edu_data")


def test_use_data_folder_that_cannot_be_written(tmp_path):
    before = data_dir()
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(DataDirNotWritableError, match="a_file"):
        env.use_data_folder(blocker)
    assert data_dir() == before


def test_use_data_folder_argument_types():
    with pytest.raises(TypeError, match="folder name"):
        env.use_data_folder(42)
    with pytest.raises(ValueError, match="empty"):
        env.use_data_folder("")


# ---------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------


def test_memory_from_proc_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384000 kB\nMemFree:         1000 kB\nMemAvailable:    8192000 kB\n")
    assert env.memory_bytes(meminfo) == (16384000 * 1024, 8192000 * 1024)


def test_memory_without_proc_meminfo(tmp_path, monkeypatch):
    total, _ = env.memory_bytes(tmp_path / "missing")
    if hasattr(env.os, "sysconf") and "SC_PHYS_PAGES" in env.os.sysconf_names:
        assert total is not None and total > 0
    monkeypatch.delattr(env.os, "sysconf")
    assert env.memory_bytes(tmp_path / "missing") == (None, None)


# ---------------------------------------------------------------------------------------------
# check_environment and the command line
# ---------------------------------------------------------------------------------------------


def test_a_complete_environment_passes(monkeypatch, capsys, tmp_path):
    fake_distribution(monkeypatch)
    no_gpu(monkeypatch)
    report = env.check_environment()
    assert report.ok and report.problems == []
    names = [(c.name, c.group) for c in report.packages]
    assert names == [("torch", "required"), ("einops", "required"), ("ipywidgets", "required"),
                     ("jupyterlab", "required"), ("pytest", "test"), ("hypothesis", "test")]
    assert report.device == "cpu" and report.preset == "tiny-cpu" and report.amp_dtype is None
    assert report.data_folder == str(tmp_path / "data") and report.data_folder_writable
    assert report.data_folder_from_env
    assert env.main([]) == 0
    out = capsys.readouterr().out
    for text in ("Python", "PyTorch", "CUDA          not available", "MPS (Apple)", "memory", "PyTorch uses",
                 str(tmp_path / "data"), "writable", "✅ einops", "einops>=0.7", "Everything the lessons need"):
        assert text in out, text


def test_a_missing_package_fails_with_its_install_command(monkeypatch, capsys):
    versions = {k: v for k, v in GOOD_VERSIONS.items() if k != "einops"}
    fake_distribution(monkeypatch, versions=versions)
    report = env.check_environment()
    assert not report.ok
    assert report.problems == ['einops is not installed: python -m pip install "einops>=0.7"']
    assert env.main([]) == 1
    out = capsys.readouterr().out
    assert "❌ einops" in out and "1 thing to fix" in out and "python -m pip install -e ." in out


def test_a_too_old_package_fails(monkeypatch):
    fake_distribution(monkeypatch, versions={**GOOD_VERSIONS, "ipywidgets": "7.7.1"})
    report = env.check_environment()
    assert report.problems == ['ipywidgets 7.7.1 does not fit ipywidgets>=8.0: python -m pip install "ipywidgets>=8.0"']


def test_missing_torch_suggests_the_cpu_build(monkeypatch):
    fake_distribution(monkeypatch, versions={k: v for k, v in GOOD_VERSIONS.items() if k != "torch"})
    report = env.check_environment()
    assert len(report.problems) == 1 and report.problems[0].startswith("torch is not installed")
    assert "--index-url https://download.pytorch.org/whl/cpu" in report.problems[0]


def test_test_packages_are_optional_unless_asked_for(monkeypatch, capsys):
    fake_distribution(monkeypatch, versions={k: v for k, v in GOOD_VERSIONS.items() if k != "pytest"})
    report = env.check_environment()
    assert report.ok
    assert [c.mark for c in report.packages if c.name == "pytest"] == ["➖"]
    report = env.check_environment(test=True)
    assert report.problems == ['pytest is not installed: python -m pip install -e ".[test]"  (in the repository root)']
    assert env.main(["--test"]) == 1
    assert "Packages for the tests" in capsys.readouterr().out


def test_pali3_edu_not_installed(monkeypatch):
    fake_distribution(monkeypatch, installed=False)
    report = env.check_environment()
    assert not report.ok
    assert "pali3-edu is not installed in this Python" in report.problems[0]
    assert "pip install -e ." in report.problems[0]


def test_an_unwritable_data_folder_is_a_problem(monkeypatch, tmp_path, capsys):
    fake_distribution(monkeypatch)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setenv(utils.DATA_ENV_VAR, str(blocker))
    report = env.check_environment()
    assert not report.ok and not report.data_folder_writable
    assert "Cannot write to the data folder" in report.problems[0] and "PALI3_EDU_DATA" in report.problems[0]
    assert env.main([]) == 1
    assert "NOT writable" in capsys.readouterr().out


def test_a_fake_t4_is_described(monkeypatch):
    fake_distribution(monkeypatch)
    fake_gpu(monkeypatch, "Tesla T4", (7, 5), 14.7)
    report = env.check_environment()
    assert report.ok and report.cuda_available
    assert report.gpus == [env.GPUInfo(0, "Tesla T4", (7, 5), int(14.7 * GIB))]
    assert report.device == "cuda" and report.preset == "colab-t4" and report.amp_dtype == "fp16"
    text = report.format()
    assert "Tesla T4 · compute capability 7.5 · 14.7 GiB · no native bf16: fp16 + loss scaling" in text
    assert "preset 'colab-t4', mixed precision: fp16 + loss scaling" in text


def test_a_fake_h100_is_described(monkeypatch):
    fake_distribution(monkeypatch)
    fake_gpu(monkeypatch, "NVIDIA H100 80GB HBM3", (9, 0), 79.1)
    report = env.check_environment()
    assert report.gpus[0].bf16 and report.preset == "h100" and report.amp_dtype == "bf16"
    assert "native bf16" in report.format()


def test_a_device_override_that_does_not_work_is_a_problem(monkeypatch):
    fake_distribution(monkeypatch)
    no_gpu(monkeypatch)
    monkeypatch.setenv("PALI3_DEVICE", "cuda")
    report = env.check_environment()
    assert not report.ok and "PALI3_DEVICE" in report.problems[-1]


def test_on_colab_only_what_colab_lacks_is_needed(monkeypatch, capsys):
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-20250101")
    versions = {k: v for k, v in GOOD_VERSIONS.items() if k not in ("jupyterlab", "einops")}
    versions["ipywidgets"] = "7.7.1"  # Colab's own: its front end needs ipywidgets 7
    fake_distribution(monkeypatch, versions=versions)
    report = env.check_environment()
    assert report.on_colab
    assert report.problems == ['einops is not installed: %pip install "einops>=0.7"']
    notes = {c.name: (c.mark, c.note) for c in report.packages}
    assert notes["jupyterlab"] == ("➖", "not needed on Colab")
    assert notes["ipywidgets"] == ("✅", "Colab's own version, kept")
    assert env.main([]) == 1
    assert env.COLAB_INSTALL in capsys.readouterr().out


def test_colab_is_detected(monkeypatch):
    assert not env.on_colab()
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert env.on_colab()


def test_the_real_installed_metadata_is_read():
    """Whatever pip installed: every requirement that applies here is listed with its version."""
    try:
        requires = metadata.requires(env.DIST_NAME) or []
    except metadata.PackageNotFoundError:
        pytest.fail("pali3-edu is not installed: run `pip install -e .` before the tests")
    report = env.check_environment()
    listed = {c.name for c in report.packages if c.group == "required"}
    core = {r.split(";")[0].split(">")[0].split("=")[0].split("[")[0].strip() for r in requires if ";" not in r}
    assert core and core == listed
    assert all(c.installed is not None for c in report.packages if c.group == "required" and c.satisfied)


def test_git_commit_of_this_checkout(tmp_path):
    if not (env._REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "-C", str(env._REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert env.git_commit() == head[:12]
    assert env.git_commit(tmp_path) is None  # not a checkout


def test_git_commit_from_packed_refs(tmp_path):
    git = tmp_path / ".git"
    git.mkdir()
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "packed-refs").write_text("# pack-refs with: peeled\n" + "ab" * 20 + " refs/heads/main\n")
    assert env.git_commit(tmp_path) == "ab" * 6
    (git / "HEAD").write_text("cd" * 20 + "\n")  # detached HEAD
    assert env.git_commit(tmp_path) == "cd" * 6


def test_the_command_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "pali3_edu.env"], capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode in (0, 1), result.stderr
    assert "environment check" in result.stdout and "Packages pali3-edu requires" in result.stdout


# ---------------------------------------------------------------------------------------------
# The Colab install
# ---------------------------------------------------------------------------------------------


def test_colab_install_pins_the_release_and_skips_colabs_own_packages():
    import pali3_edu

    assert env.COLAB_TAG == f"v{pali3_edu.__version__}"
    assert env.COLAB_PACKAGE == f"pali3-edu @ git+https://github.com/pali3-edu/pali3-edu@v{pali3_edu.__version__}"
    first, second = env.COLAB_INSTALL.split(" && ")
    assert first == f'pip install -q --no-deps "{env.COLAB_PACKAGE}"'
    assert second == "pip install -q " + " ".join(f'"{r}"' for r in env.COLAB_REQUIREMENTS)
    for colab_has_it in ("torch", "matplotlib", "ipywidgets", "tqdm", "pillow", "jupyterlab"):
        assert colab_has_it not in " ".join(env.COLAB_REQUIREMENTS)


def _run_setup_cell(monkeypatch, installed: bool) -> list[list[str]]:
    calls: list[list[str]] = []
    real_import = builtins.__import__
    state = {"failed": installed}

    def fake_import(name, *args, **kwargs):
        if name == "pali3_edu" and not state["failed"]:
            state["failed"] = True  # the first import fails, as before an install
            raise ImportError("No module named 'pali3_edu'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(subprocess, "check_call", lambda cmd: calls.append(list(cmd)))
    exec(compile(env.COLAB_SETUP_CELL, "<setup cell>", "exec"), {})  # noqa: S102 - the cell under test
    monkeypatch.setattr(builtins, "__import__", real_import)
    return calls


def test_setup_cell_does_nothing_where_the_course_is_installed(monkeypatch):
    assert _run_setup_cell(monkeypatch, installed=True) == []


def test_setup_cell_on_colab_installs_without_dependencies_then_what_colab_lacks(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    calls = _run_setup_cell(monkeypatch, installed=False)
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    assert calls == [pip + ["--no-deps", env.COLAB_PACKAGE], pip + list(env.COLAB_REQUIREMENTS)]


def test_setup_cell_elsewhere_installs_the_release_with_its_dependencies(monkeypatch):
    calls = _run_setup_cell(monkeypatch, installed=False)
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", env.COLAB_PACKAGE]]
