"""docs/options.md maps every option of the original to ours: each option it names must exist."""
from __future__ import annotations

import re
from pathlib import Path

from jaxatari import cli

DOC = Path(__file__).resolve().parent.parent / "docs" / "options.md"


def accepted_flags() -> set[str]:
    parser = cli.make_parser()
    flags: set[str] = set()
    for subparser in parser._subparsers._group_actions[0].choices.values():
        for action in subparser._actions:
            flags.update(action.option_strings)
    return flags


def test_every_option_named_in_the_table_is_accepted():
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| `-")]
    assert len(rows) >= 55   # the original's Setup.lua options, one row each
    named = set()
    for row in rows:
        ours = row.split("|")[3]
        named.update(re.findall(r"--[a-z][a-z-]*", ours))
    assert named, "the table names none of our options"
    missing = sorted(named - accepted_flags())
    assert not missing, f"options named in docs/options.md but not accepted: {missing}"
