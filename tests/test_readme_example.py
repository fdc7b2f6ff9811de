"""The README's first command runs examples/file_watcher.py on the embedded default; it must keep working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "file_watcher.py"


@pytest.mark.timeout(120)
def test_file_watcher_example_processes_every_file_once(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(EXAMPLE)], cwd=tmp_path, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Demo complete!" in proc.stdout
    assert proc.stdout.count("[SUCCESS] process_file") == 3
    assert sorted(p.name for p in (tmp_path / "demo-inbox" / "done").iterdir()) == [
        "data_01.csv",
        "data_02.csv",
        "data_03.csv",
    ]
    assert (tmp_path / "cloacina-demo.db").exists()  # the embedded default keeps its history in SQLite
