"""The project's structural promises: engine free of UI libraries, dashboard on the public API,
local-only Streamlit settings, a torch requirement the fast local build satisfies."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import dit_core

ROOT = Path(__file__).resolve().parents[1]
UI_LIBRARIES = ("streamlit", "plotly")


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) for every import statement of a file; relative imports resolved by name only."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.extend((a.name, [], node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = ("." * node.level) + (node.module or "")
            out.append((mod, [a.name for a in node.names], node.lineno))
    return out


def test_engine_never_imports_a_ui_library_statically():
    files = sorted((ROOT / "dit_core").rglob("*.py"))
    assert files, "dit_core has no modules?"
    bad = [
        f"{f.relative_to(ROOT)}:{line}: {mod}"
        for f in files
        for mod, _, line in _imports(f)
        if mod.split(".")[0] in UI_LIBRARIES
    ]
    assert not bad, "dit_core must not import Streamlit or Plotly:\n" + "\n".join(bad)


def test_engine_never_imports_a_ui_library_at_run_time():
    # every module of dit_core, imported in a fresh interpreter: no UI library gets pulled in transitively
    mods = sorted(f"dit_core.{p.stem}" for p in (ROOT / "dit_core").glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {UI_LIBRARIES!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"importing dit_core pulled in: {out.stdout.strip()}"


def test_dashboard_uses_only_the_public_api_of_dit_core():
    public = set(dit_core.__all__)
    bad = []
    for f in sorted((ROOT / "dashboard").rglob("*.py")):
        for mod, names, line in _imports(f):
            where = f"{f.relative_to(ROOT)}:{line}"
            if mod == "dit_core":
                bad += [f"{where}: dit_core.{n} is not in dit_core.__all__" for n in names if names and n not in public]
            elif mod.startswith("dit_core."):
                bad.append(f"{where}: imports {mod} (use the names dit_core exports)")
    assert not bad, "\n".join(bad)


def test_dashboard_attribute_uses_of_dit_core_are_public():
    # `import dit_core as dit; dit.something` must only touch exported names
    public = set(dit_core.__all__)
    bad = []
    for f in sorted((ROOT / "dashboard").rglob("*.py")):
        tree = ast.parse(f.read_text())
        aliases = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names if a.name == "dit_core"}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                if node.attr not in public:
                    bad.append(f"{f.relative_to(ROOT)}:{node.lineno}: dit_core.{node.attr} is not in dit_core.__all__")
    assert not bad, "\n".join(bad)


def test_public_names_exist():
    missing = [n for n in dit_core.__all__ if not hasattr(dit_core, n)]
    assert not missing


def test_streamlit_config_is_local_only_and_private():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "127.0.0.1"
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["client"]["toolbarMode"] == "viewer"


def test_torch_requirement_admits_the_local_build_and_setup_installs_it_first():
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_req = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch"]
    assert len(torch_req) == 1
    assert torch_req[0].specifier.contains("2.13.0")
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert setup.index('TORCH_VERSION="2.13.0"') < setup.index('install -qq -e ".[dev,bench]"')


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    cmd = "bash scripts/setup.sh --browser && .venv/bin/python -m pytest"
    assert cmd in readme.split("## ")[0], "the README's opening must show the test command"
    assert any(line.strip() == cmd for line in ci.splitlines())

