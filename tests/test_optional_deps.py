"""The core package works with torch alone: plotting and data packages load only when a command needs them."""

from __future__ import annotations

import json
import subprocess
import sys

OPTIONAL = ("matplotlib", "sklearn", "scipy", "PIL")

CHECK = f"""
import sys, rmsprop, rmsprop.cli, rmsprop.trajectories, rmsprop.compare, rmsprop.lineup
rmsprop.cli.build_parser()
loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({OPTIONAL!r}))
print(loaded, file=sys.stderr)
for name in {OPTIONAL!r}:
    sys.modules[name] = None  # importing it now raises ImportError
sys.exit(rmsprop.cli.main(['trajectories', '--optimizers', 'sgd', '--steps', '5', '--json', '-']))
"""


def test_the_package_imports_no_optional_dependency_and_runs_without_them():
    completed = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr.splitlines()[0] == "[]"  # nothing optional loaded by importing
    assert json.loads(completed.stdout)["schema"] == "rmsprop-trajectories/1"
