"""Rules of the house that a build can break: the core imports no framework; integrations, demo and app install
under mentor_agents; the README's commands are the ones CI runs."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("langchain", "langchain_core", "langchain_openai", "langgraph", "openai", "fastapi", "uvicorn", "starlette")


def core_modules():
    core = ROOT / "mentor_agents"
    return sorted([*core.glob("*.py"), *(core / "training").glob("*.py")])


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_core_modules_load_no_framework_transitively():
    modules = [module_name(p) for p in core_modules() if module_name(p) != "mentor_agents"]
    code = (
        "import sys\n"
        f"for m in {modules!r}: __import__(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "", f"core imports pulled in: {out.stdout.strip()}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, list[str]]:
    """The wheel, unpacked as pip would install it: (site directory, file names in the wheel)."""
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools reuses a checkout's build/ directory, where files moved or deleted since stay.
    source = out / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    for folder in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values():
        shutil.copytree(ROOT / folder, source / folder, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True, capture_output=True,
    )
    (wheel,) = out.glob("mentor_agents-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(out / "site")
        return out / "site", archive.namelist()


def test_wheel_installs_integrations_demo_and_app_under_the_package(installed):
    _, names = installed
    top_level = {name.split("/")[0] for name in names}
    assert not top_level & {"integrations", "demo", "app"}
    assert "mentor_agents/integrations/langgraph/__init__.py" in names
    assert "mentor_agents/integrations/openai/__init__.py" in names
    assert "mentor_agents/demo/calculator.py" in names
    assert "mentor_agents/app/cli.py" in names


def lint_imports(site: Path) -> subprocess.CompletedProcess:
    """import-linter's contracts from pyproject.toml, run on the package installed in ``site``."""
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(config_filename=sys.argv[1]))"
    return subprocess.run([sys.executable, "-c", code, str(ROOT / "pyproject.toml")], cwd=site, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(site)})


def test_import_layers_hold(installed):
    """app above demo above integrations above the core (but for distill's adapter_for); no agent framework or web
    stack in the core, directly or through an integration."""
    result = lint_imports(installed[0])
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contract_lists_every_core_module_it_forbids_frameworks_to():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers, forbidden = config
    core = {f"mentor_agents.{name.strip()}" for name in layers["layers"][-1].split(":")}
    assert core == set(forbidden["source_modules"])


def test_import_layers_catch_a_core_module_importing_the_demo(installed, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(installed[0], site)
    with open(site / "mentor_agents" / "rewards.py", "a") as f:
        f.write("\nfrom mentor_agents.demo import calculator\n")
    result = lint_imports(site)
    assert result.returncode == 1
    assert "mentor_agents.rewards is not allowed to import mentor_agents.demo" in result.stdout
    assert "mentor_agents.rewards is not allowed to import langchain_core" in result.stdout


def test_readme_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    install = re.search(r"^pip install torch==2\.13\.0 .*$", readme, re.M).group(0)
    test = re.search(r"^OMP_NUM_THREADS=1 pytest.*$", readme, re.M).group(0)
    assert install in ci.splitlines()
    assert test in ci.splitlines()
