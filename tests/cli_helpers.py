"""Running an ``rmsprop`` command in-process and reading its ``--json -`` output."""

from __future__ import annotations

import contextlib
import io
import json

from rmsprop.cli import main


def command_json(*argv: str) -> tuple[dict, str]:
    """``rmsprop ARGV --json -``: the parsed JSON (stdout) and the tables (stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main([*argv, "--json", "-"]) == 0
    return json.loads(out.getvalue()), err.getvalue()
