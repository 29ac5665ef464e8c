"""Every project import in scripts/ resolves, including those inside functions that only a long run reaches (the
full-size check once stopped at its last phase on a helper that had moved from tests.conftest to tests.helpers)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from portrait.settings import PROJECT_ROOT

FIRST_PARTY = ("portrait", "clients", "prompt_agent", "ui", "tests")
SCRIPTS = sorted(p for p in (PROJECT_ROOT / "scripts").iterdir() if p.is_file() and p.suffix in ("", ".py")
                 and p.read_text(errors="replace").startswith(("#!/usr/bin/env python", '"""', "from", "import")))


def project_imports(path: Path) -> list[tuple[str, str | None, int]]:
    """(module, name or None, line) of every first-party import anywhere in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] in FIRST_PARTY:
            found += [(node.module, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names if alias.name.split(".")[0] in FIRST_PARTY]
    return found


def test_scripts_are_found():
    names = {p.name for p in SCRIPTS}
    assert {"full_size_check", "benchmark", "gpu_check", "build_tiny_models.py"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_project_import_resolves(script):
    missing = []
    for module, name, line in project_imports(script):
        try:
            imported = importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name == "triton_python_backend_utils":  # only inside a Triton stub
                continue
            missing.append(f"{script.name}:{line}: {module} ({error})")
            continue
        if name is not None and name != "*" and not hasattr(imported, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                missing.append(f"{script.name}:{line}: {name} is not in {module}")
    assert not missing, "\n".join(missing)
