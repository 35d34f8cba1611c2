"""Where a committed result came from: the git commit (and whether the tree had changes) and
the machine. Every script that writes to results/ records these the same way."""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> tuple[str, bool]:
    """(HEAD's hash or "unknown", whether tracked files differ from it)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True, cwd=ROOT).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, cwd=ROOT).stdout.strip())
        return commit, dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


def commit_label() -> str:
    """The commit as one string, marked when the tree had uncommitted changes."""
    commit, dirty = git_commit()
    return commit + (" (uncommitted changes)" if dirty else "")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_result(out: Path, record: dict, table: list[str]) -> None:
    """Writes ``<out>.json`` (the record) and ``<out>.md`` (the table, then the record's
    command and commit, then ``<out>-notes.md`` verbatim when that file exists), and prints the
    markdown. The notes file holds what a person wrote about the result, so that rerunning the
    script to refresh the numbers keeps it."""
    import json
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [*table, "", f"Command: `{record['command']}`", "", f"Commit: `{record['commit']}`", ""]
    notes = out.with_name(out.name + "-notes.md")
    if notes.is_file():
        lines += [notes.read_text().rstrip("\n"), ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
