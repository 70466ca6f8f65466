"""Rules of the house that a build can break: the core imports no framework; integrations install under
mentor_agents.integrations; the README's commands are the ones CI runs."""

import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("langchain", "langchain_core", "langchain_openai", "langgraph", "openai", "fastapi", "uvicorn", "starlette")


def core_modules():
    core = ROOT / "mentor_agents"
    return sorted([*core.glob("*.py"), *(core / "training").glob("*.py")])


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_core_source_imports_no_framework():
    offenders = []
    for path in core_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                # distill finds the adapter for the agent it was given: the one allowed way into integrations
                if name.split(".")[0] in FORBIDDEN:
                    offenders.append(f"{path.name}:{node.lineno} imports {name}")
    assert not offenders, "the core must not import an agent framework or HTTP stack:\n" + "\n".join(offenders)


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


def test_wheel_installs_integrations_under_the_package(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("mentor_agents-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert "integrations" not in top_level
    assert "mentor_agents/integrations/langgraph/__init__.py" in names
    assert "mentor_agents/integrations/openai/__init__.py" in names


def test_readme_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    install = re.search(r"^pip install torch==2\.13\.0 .*$", readme, re.M).group(0)
    test = re.search(r"^OMP_NUM_THREADS=1 pytest.*$", readme, re.M).group(0)
    assert install in ci.splitlines()
    assert test in ci.splitlines()
