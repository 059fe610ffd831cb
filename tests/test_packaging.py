"""The install paths agree: pyproject.toml, environment.yml, README, .ci/run and the Colab setup."""

import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser from PyPI (tomli, a test dependency)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_requirements() -> dict[str, str]:
    meta = _pyproject()["project"]
    reqs = list(meta["dependencies"]) + list(meta["optional-dependencies"]["test"])
    return {_name(r): r.replace(" ", "") for r in reqs}


def _environment_requirements() -> dict[str, str]:
    reqs = {}
    text = (ROOT / "environment.yml").read_text()
    pip_section = text.split("- pip:", 1)[1]  # the pip-installed packages mirror pyproject
    for line in pip_section.splitlines():
        m = re.match(r"^\s+-\s+([A-Za-z0-9_.\-]+[^#]*?)\s*(#.*)?$", line)
        if m and not m.group(1).startswith("-e"):
            reqs[_name(m.group(1))] = m.group(1).replace(" ", "")
    return reqs


def test_environment_yml_matches_pyproject():
    assert _environment_requirements() == _pyproject_requirements()


def test_environment_yml_python_matches_requires_python():
    text = (ROOT / "environment.yml").read_text()
    python = re.search(r"^\s+-\s+python(\S*)\s*$", text, flags=re.MULTILINE)
    assert python, "environment.yml should pin the Python version"
    assert python.group(1) == _pyproject()["project"]["requires-python"]


def test_required_packages_are_declared():
    declared = _pyproject_requirements()
    for pkg in ["torch", "einops", "sentencepiece", "matplotlib", "datasets", "nbval", "ipywidgets",
                "jupyterlab", "tqdm", "pillow", "safetensors", "transformers", "hypothesis"]:
        assert pkg in declared, f"{pkg} missing from pyproject.toml"
    assert declared["torch"].startswith("torch>="), "keep torch as a >= range (Colab brings its own)"


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.DOTALL)


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    test_cmd = ci[-1].strip()
    assert any(test_cmd == block.strip() for block in _readme_commands()), (
        f".ci/run's last line {test_cmd!r} must be one of the README's command blocks"
    )


def test_every_notebook_is_listed_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert nb.name in readme, f"{nb.name} is not in the README's lesson table"


def _version_tuple(spec: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", spec))


def test_build_requires_a_setuptools_that_reads_the_license():
    """`license = "MIT"` (an SPDX string, PEP 639) is an error for setuptools < 77."""
    data = _pyproject()
    if isinstance(data["project"].get("license"), str) or "license-files" in data["project"]:
        reqs = [r.replace(" ", "") for r in data["build-system"]["requires"]]
        setuptools = [r for r in reqs if _name(r) == "setuptools"]
        assert setuptools and setuptools[0].startswith("setuptools>="), reqs
        assert _version_tuple(setuptools[0].split(">=")[1]) >= (77,), (
            f"{setuptools[0]}: a string `license` needs setuptools>=77 in [build-system].requires"
        )


def test_tests_can_read_pyproject_on_every_supported_python():
    """This file reads pyproject.toml with tomllib (3.11+); older Pythons need tomli from [test]."""
    floor = _version_tuple(_pyproject()["project"]["requires-python"].lstrip(">="))
    if floor < (3, 11):
        test_reqs = [r.replace(" ", "").replace('"', "'") for r in
                     _pyproject()["project"]["optional-dependencies"]["test"]]
        assert any(r.startswith("tomli") and "python_version<'3.11'" in r for r in test_reqs), (
            "requires-python allows 3.10, so the test extra needs tomli; python_version < '3.11'"
        )


def test_readme_commands_install_what_they_use():
    """`pip install -e .` then `jupyter lab notebooks/` needs jupyterlab in the core dependencies;
    `pip install -e ".[test]" && python -m pytest` needs nbval (pytest runs with --nbval-lax)."""
    meta = _pyproject()["project"]
    core = {_name(r) for r in meta["dependencies"]}
    test = {_name(r) for r in meta["optional-dependencies"]["test"]}
    assert "jupyterlab" in core
    addopts = _pyproject()["tool"]["pytest"]["ini_options"]["addopts"]
    if "--nbval" in addopts:
        assert "nbval" in core | test and "pytest" in test


def test_colab_extra_is_what_colab_lacks():
    meta = _pyproject()["project"]
    core = {_name(r): r.replace(" ", "") for r in meta["dependencies"]}
    colab = {_name(r): r.replace(" ", "") for r in meta["optional-dependencies"]["colab"]}
    for name, req in colab.items():
        assert core.get(name) == req, f"colab extra {req!r} should repeat the core requirement {core.get(name)!r}"
    brought_by_colab = {"torch", "matplotlib", "ipywidgets", "tqdm", "pillow", "jupyterlab", "nbval"}
    assert not brought_by_colab & set(colab), "Colab has these already: installing them would replace Colab's own"


def test_colab_install_matches_pyproject():
    import pali3_edu
    from pali3_edu import env

    meta = _pyproject()["project"]
    assert meta["version"] == pali3_edu.__version__, "pyproject.toml and pali3_edu.__version__ differ"
    assert env.COLAB_TAG == f"v{meta['version']}"
    assert list(env.COLAB_REQUIREMENTS) == [r.replace(" ", "") for r in meta["optional-dependencies"]["colab"]]
    assert f"--no-deps \"{env.COLAB_PACKAGE}\"" in env.COLAB_INSTALL
    for req in env.COLAB_REQUIREMENTS:
        assert f'"{req}"' in env.COLAB_INSTALL and f'"{req}"' in env.COLAB_SETUP_CELL
