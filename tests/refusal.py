"""The check every bad-input test makes: the CLI refuses with exit status 2 and one line on
stderr (no traceback), before it writes the run directory."""
from __future__ import annotations

from pathlib import Path

from jaxatari import cli


def assert_refused_in_one_line(capsys, argv: list[str], expected: str, run_dir: Path) -> str:
    """Run ``jaxatari ARGV`` in-process; return the one stderr line, which holds EXPECTED."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expected in lines[0], lines[0]
    assert not run_dir.exists()
    return lines[0]
