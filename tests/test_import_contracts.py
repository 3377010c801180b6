"""The import structure: pyproject.toml's contracts hold, and config.py imports nothing else of the trainer."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of the modules a file imports (relative imports resolved against ``package``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            names.add(".".join(base + ([node.module] if node.module else [])))
    return names


def test_config_imports_nothing_else_of_the_trainer():
    imported = _imported_modules(ROOT / "srf_upsample" / "train" / "config.py", "srf_upsample.train")
    assert {name for name in imported if name.startswith("srf_upsample")} == {"srf_upsample._checks"}


def test_the_resolver_reads_relative_imports():  # the helper above must see a trainer import where there is one
    imported = _imported_modules(ROOT / "srf_upsample" / "train" / "loop.py", "srf_upsample.train")
    assert {"srf_upsample.train.stages", "srf_upsample.train.config"} <= imported


def test_import_contracts_hold():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.is_file(), "lint-imports is missing: pip install -e '.[test]' (it brings import-linter)"
    run = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "Contracts: 6 kept, 0 broken." in run.stdout
