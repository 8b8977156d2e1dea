"""The ``rmsprop`` commands at their edges: a user error is one line and exit code 2, found
before any work; a closed pipe ends a command quietly; output shows as it is made."""

from __future__ import annotations

import io
import os
import select
import subprocess
import sys
import time

import pytest

from rmsprop import demo
from rmsprop.cli import main

SEED_LIMIT = str(2**64)  # one past torch.manual_seed's range
MANY_CPUS = str((os.cpu_count() or 1) + 1)

# command, arguments, what the one error line says after "rmsprop COMMAND: error: argument "
BAD_NUMBERS = [
    ("demo", ["--lr", "nan"], "--lr: must be a finite number above 0, got nan"),
    ("demo", ["--lr", "-1"], "--lr: must be a finite number above 0, got -1"),
    ("demo", ["--lr", "inf"], "--lr: must be a finite number above 0, got inf"),
    ("demo", ["--lr", "0"], "--lr: must be a finite number above 0, got 0"),
    ("demo", ["--lr", "fast"], "--lr: not a number: 'fast'"),
    ("demo", ["--gamma", "1.5"], "--gamma: must be a finite number in [0, 1], got 1.5"),
    ("demo", ["--gamma", "-0.1"], "--gamma: must be a finite number in [0, 1], got -0.1"),
    ("demo", ["--gamma", "nan"], "--gamma: must be a finite number in [0, 1], got nan"),
    ("demo", ["--epochs", "0"], "--epochs: must be an integer of at least 1, got 0"),
    ("demo", ["--epochs", "2.5"], "--epochs: not an integer: '2.5'"),
    ("demo", ["--seed", SEED_LIMIT], "--seed: must be an integer from -2**63 to 2**64 - 1"),
    ("trajectories", ["--steps", "-3"], "--steps: must be an integer of at least 1, got -3"),
    ("trajectories", ["--tol", "inf"], "--tol: must be a finite number above 0, got inf"),
    ("trajectories", ["--tol", "nan"], "--tol: must be a finite number above 0, got nan"),
    ("trajectories", ["--start", "nan,0"], "--start: X and Y must be finite and within"),
    ("trajectories", ["--start", "2e6,0"], "--start: X and Y must be finite and within"),
    ("compare", ["--epochs", "0"], "--epochs: must be an integer of at least 1, got 0"),
    ("compare", ["--batch-size", "0"], "--batch-size: must be an integer of at least 1, got 0"),
    ("compare", ["--threads", "0"], "--threads: must be an integer from 1 to"),
    ("compare", ["--threads", MANY_CPUS], "--threads: must be an integer from 1 to"),
    ("compare", ["--seeds", f"0,{SEED_LIMIT}"], "--seeds: must be an integer from -2**63 to 2**64 - 1"),
    ("bench", ["--rounds", "0"], "--rounds: must be an integer of at least 1, got 0"),
    ("bench", ["--max-size", "inf"], "--max-size: not a number: 'inf'"),
    ("bench", ["--threads", MANY_CPUS], "--threads: must be an integer from 1 to"),
    ("trajectories", ["--lr", "inf"], "--lr: a learning rate must be a finite number above 0, got inf"),
    ("compare", ["--lr", "sgd=inf"], "--lr: a learning rate must be a finite number above 0, got inf"),
]


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``rmsprop ARGV``, expect exit code 2 and nothing on stdout; return the one stderr line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.endswith("\n"), err
    return err.rstrip("\n")


@pytest.mark.parametrize(("command", "argv", "says"), BAD_NUMBERS,
                         ids=[f"{c} {' '.join(a)}" for c, a, _ in BAD_NUMBERS])
def test_a_bad_number_is_one_line_and_exit_code_2(capsys, command, argv, says):
    assert _refused(capsys, [command, *argv]).startswith(f"rmsprop {command}: error: argument {says}")


def test_good_edge_values_pass(capsys):
    assert main(["demo", "--epochs", "1", "--gamma", "1", "--seed", "-1"]) == 0
    assert main(["demo", "--epochs", "1", "--gamma", "0", "--lr", "1e-300"]) == 0
    capsys.readouterr()


def test_other_parse_errors_are_one_line_too(capsys):
    assert _refused(capsys, ["demo", "--no-such-flag"]) == (
        "rmsprop: error: unrecognized arguments: --no-such-flag")
    assert _refused(capsys, ["trajectories", "--function", "nope"]).startswith(
        "rmsprop trajectories: error: argument --function: 'nope' is not one of")
    assert _refused(capsys, []) == "rmsprop: error: the following arguments are required: COMMAND"


# command, arguments that write a file (FILE stands for the path under test)
TRAJECTORIES = ["--steps", "2", "--optimizers", "sgd"]
COMPARE = ["--task", "seed", "--optimizers", "sgd", "--epochs", "1", "--no-progress"]
BENCH = ["--suite", "quick", "--rounds", "1", "--paths", "foreach", "--no-progress"]
WRITERS = [
    ("trajectories", [*TRAJECTORIES, "--out", "FILE"]),
    ("trajectories", [*TRAJECTORIES, "--gif", "FILE"]),
    ("trajectories", [*TRAJECTORIES, "--json", "FILE"]),
    ("compare", [*COMPARE, "--out", "FILE"]),
    ("compare", [*COMPARE, "--json", "FILE"]),
    ("bench", [*BENCH, "--json", "FILE"]),
    ("bench", [*BENCH, "--out", "FILE"]),
]


@pytest.mark.parametrize(("command", "argv"), WRITERS, ids=[f"{c} {a[-2]}" for c, a in WRITERS])
def test_a_file_in_a_missing_directory_is_refused_before_any_work(capsys, tmp_path, command, argv):
    target = tmp_path / "missing" / "result.png"
    line = _refused(capsys, [command, *(str(target) if a == "FILE" else a for a in argv)])
    assert line == (f"rmsprop {command}: error: argument {argv[-2]}: no such directory: "
                    f"'{target.parent}'")
    assert list(tmp_path.iterdir()) == []


def test_a_directory_is_not_a_file(capsys, tmp_path):
    line = _refused(capsys, ["trajectories", "--steps", "2", "--json", str(tmp_path)])
    assert line == f"rmsprop trajectories: error: argument --json: '{tmp_path}' is a directory"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_directory_is_refused(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    line = _refused(capsys, ["trajectories", "--steps", "2", "--json", str(locked / "x.json")])
    assert line == f"rmsprop trajectories: error: argument --json: cannot write into '{locked}'"


def test_json_dash_is_stdout_and_a_plain_name_is_the_working_directory(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["trajectories", "--steps", "2", "--optimizers", "sgd", "--json", "-"]) == 0
    assert capsys.readouterr().out.startswith("{")
    assert main(["trajectories", "--steps", "2", "--optimizers", "sgd", "--json", "paths.json"]) == 0
    assert (tmp_path / "paths.json").read_text().startswith("{")
    capsys.readouterr()


# ---------------------------------------------------------------- the real command, as a user runs it

def _command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "rmsprop", *argv]


def test_a_user_error_in_a_real_process_is_one_line_no_traceback():
    done = subprocess.run(_command("demo", "--gamma", "1.5"), capture_output=True, text=True, timeout=120,
                          check=False)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == ("rmsprop demo: error: argument --gamma: must be a finite number in [0, 1], "
                           "got 1.5\n")


# Both print well over a pipe's 64 KiB, so the reader's closing end is certain to be hit.
PIPED = [
    ["demo", "--epochs", "5000"],
    ["trajectories", "--optimizers", "sgd", "--steps", "1000", "--json", "-"],
]


@pytest.mark.parametrize("argv", PIPED, ids=[a[0] for a in PIPED])
def test_a_closed_pipe_ends_the_command_quietly(tmp_path, argv):
    """``rmsprop demo | head -3``: the reader leaves early; no traceback, no complaint."""
    with open(tmp_path / "stderr", "w+") as err:
        proc = subprocess.Popen(_command(*argv), stdout=subprocess.PIPE, stderr=err)
        try:
            for _ in range(3):
                assert proc.stdout.readline()
            proc.stdout.close()  # what head does after its three lines
            code = proc.wait(timeout=120)
        finally:
            proc.kill()
            proc.wait()
        err.seek(0)
        complaint = err.read()
    assert code in (0, 141)  # 141: 128 + SIGPIPE, what a shell reports for `yes | head`
    assert "Traceback" not in complaint and "Error" not in complaint, complaint


def test_a_long_demo_shows_its_first_lines_while_it_runs():
    """Output reaches a pipe line by line as the demo makes it, not all at the end."""
    proc = subprocess.Popen(_command("demo", "--epochs", "10000000"), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60  # importing torch on a busy machine; the run takes hours
        lines = b""
        while lines.count(b"\n") < 2 and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 1)[0]:
                lines += os.read(proc.stdout.fileno(), 4096)
        still_running = proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    assert lines.startswith(b"== 1. The seed notebook"), lines[:200]
    assert b"\nstart: " in lines and still_running


def test_stdout_is_line_buffered_while_a_command_runs(monkeypatch):
    """Part 1's lines have left the process before part 3 is computed, even into a block-buffered
    stdout (what Python gives a pipe)."""
    sink = io.BytesIO()
    stdout = io.TextIOWrapper(sink, encoding="utf-8", line_buffering=False)
    seen: list[bytes] = []
    part3 = demo.compare_on_badly_scaled_data

    def spy() -> demo.ScaleComparison:
        seen.append(sink.getvalue())
        return part3()

    monkeypatch.setattr(demo, "compare_on_badly_scaled_data", spy)
    monkeypatch.setattr(sys, "stdout", stdout)
    assert main(["demo"]) == 0
    assert b"Epoch 10, Loss = 1.2694\n" in seen[0]
    assert stdout.line_buffering is False  # restored: main leaves the caller's stream as it found it
