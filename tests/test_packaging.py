"""The install paths agree: pyproject.toml, environment.yml, README and .ci/run."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_requirements() -> dict[str, str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
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


def test_required_packages_are_declared():
    declared = _pyproject_requirements()
    for pkg in ["torch", "einops", "sentencepiece", "matplotlib", "datasets", "nbval", "ipywidgets",
                "jupyterlab", "tqdm", "pillow", "safetensors", "transformers", "hypothesis"]:
        assert pkg in declared, f"{pkg} missing from pyproject.toml"
    assert declared["torch"].startswith("torch>="), "keep torch as a >= range (Colab brings its own)"


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)


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
