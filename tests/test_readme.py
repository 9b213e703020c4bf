"""README stays true: its models table is the registry's, and CI runs its test command."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_models_table_matches_the_registry():
    table = subprocess.run([sys.executable, str(ROOT / "scripts" / "models_table.py")], check=True,
                           capture_output=True, text=True).stdout.strip()
    assert table.count("\n") >= 5
    assert table in (ROOT / "README.md").read_text(), "regenerate README's table: python scripts/models_table.py"


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"`(python -m pytest[^`]*)`", readme).group(1)
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines
