"""The layers are enforced, not hoped for: pyproject's import-linter contracts hold (and can fail)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"]


def lint(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LINT, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    result = lint("--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout, result.stdout


def test_a_broken_contract_is_reported(tmp_path):
    """The linter really reads the imports: the Dagster layer does import dagster, so this contract breaks."""
    (tmp_path / "contracts.toml").write_text(
        '[tool.importlinter]\nroot_package = "sora_pipeline"\ninclude_external_packages = true\n\n'
        '[[tool.importlinter.contracts]]\nname = "defs without dagster"\ntype = "forbidden"\n'
        'source_modules = ["sora_pipeline.defs"]\nforbidden_modules = ["dagster"]\n')
    result = lint("--no-cache", "--config", str(tmp_path / "contracts.toml"))
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout + result.stderr


def test_no_module_over_the_size_limit_without_a_reason():
    """Files a person can hold in their head: ~400 lines, unless the file says why it is longer."""
    long = {}
    for path in [*REPO.glob("sora_pipeline/**/*.py"), *REPO.glob("benchmarks/*.py"), *REPO.glob("tests/*.py")]:
        text = path.read_text()
        if text.count("\n") > 430 and "longer than ~400 lines because" not in text:
            long[str(path.relative_to(REPO))] = text.count("\n")
    assert not long, f"split these along their seams (or say why not): {long}"
