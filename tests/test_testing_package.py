"""kubetune.testing (the test cluster) ships inside the kubetune package, next to the operator, but the operator, the
user's commands and the trainer never import it: their images have none of its libraries (kmock) and must not need
them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import kubetune
import kubetune_trainer

OPERATOR = Path(kubetune.__file__).parent
TESTING = OPERATOR / "testing"
TRAINER = Path(kubetune_trainer.__file__).parent


def product_modules(package: Path, prefix: str) -> list[str]:
    """Every module of the package's tree outside kubetune.testing, by dotted name."""
    names = []
    for path in sorted(package.rglob("*.py")):
        if path.is_relative_to(TESTING):
            continue
        parts = path.relative_to(package).with_suffix("").parts
        names.append(".".join((prefix, *parts[:-1])) if parts[-1] == "__init__" else ".".join((prefix, *parts)))
    return names


def imported_names(path: Path) -> set[str]:
    """The modules a file imports anywhere in it (inside functions too), `from a import b` counted as a and a.b."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


def test_no_product_module_imports_the_test_cluster():
    wrong = [
        f"{path.relative_to(OPERATOR.parent.parent)}: {name}"
        for package in (OPERATOR, TRAINER)
        for path in sorted(package.rglob("*.py"))
        if not path.is_relative_to(TESTING)
        for name in sorted(imported_names(path))
        if name == "kubetune.testing" or name.startswith("kubetune.testing.")
    ]
    assert wrong == []


def test_importing_every_operator_module_loads_neither_the_test_cluster_nor_kmock():
    modules = product_modules(OPERATOR, "kubetune")
    assert "kubetune.controller.main" in modules and "kubetune.cli" in modules and "kubetune.testing" not in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(sorted(n for n in sys.modules if n.startswith('kubetune.testing') or n.split('.')[0] == 'kmock'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_the_checks_above_see_an_import_of_the_test_cluster(tmp_path):
    # The scan finds each spelling of the import, so a clean result above means something.
    for text in (
        "import kubetune.testing.emulator\n",
        "from kubetune.testing import harness\n",
        "from kubetune import testing\n",
        "def lazy():\n    from kubetune.testing.harness import wait_for\n",
    ):
        module = tmp_path / "module.py"
        module.write_text(text)
        assert any(n == "kubetune.testing" or n.startswith("kubetune.testing.") for n in imported_names(module)), text
