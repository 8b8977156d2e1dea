"""`make gpu-check`: on a machine with CUDA, every CUDA test, then the GPU benchmark, in one command.

1. ``pytest tests/test_cuda.py`` (every test that needs a GPU: fused = reference for fp32, bf16 and
   fp16 parameters at every state precision, a capturable step replayed in a CUDA graph under a
   changing tensor lr, nonfinite="skip" without a host sync at fp32, bf16 and 8-bit state, FSDP2 on
   one GPU), its log and JUnit XML under the output folder;
2. ``rmsprop bench --device cuda --suite gpu`` (16-tensor sizes up to 1e9 parameters as the
   device's memory allows, GPT-2 small and ResNet-50 shapes; torch.optim.RMSprop foreach and a
   torch.compile of its step, ours at fp32, bf16 and 8-bit state, bitsandbytes where installed),
   writing bench.json, bench.png (with matplotlib) and bench.log;
3. a short summary, also written to summary.txt.

Each part runs under a hard time limit (the defaults keep the whole under 8 minutes: the tests get
240 s; the benchmark starts no new case after 170 s and is stopped at 240 s; it rewrites bench.json
after every case, so a stopped run keeps what it measured), and a part that fails or runs out of
time fails the check, as does a CUDA test skipped for want of the fused path (on a CUDA machine
that means the check did not check it). The parts run with this interpreter and this checkout's
``src`` first on PYTHONPATH, so a machine whose Python already holds torch needs no install:
``python3 scripts/gpu_check.py``.

Without a CUDA device it prints "no CUDA device: nothing to check" and exits with status 2 before
starting anything: never 0, so that a machine without a GPU (CI) cannot be mistaken for a pass.

Exit status: 0 every part passed; 1 a part failed or ran out of time; 2 no CUDA device.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NO_CUDA = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "build" / "gpu",
                        help="where the logs, JUnit XML, JSON, plot and summary go (default: build/gpu)")
    parser.add_argument("--tests-timeout", type=float, default=240, metavar="S",
                        help="hard limit on the CUDA tests (default: %(default)s)")
    parser.add_argument("--bench-time-limit", type=float, default=170, metavar="S",
                        help="the benchmark starts no new case after this (default: %(default)s)")
    parser.add_argument("--bench-timeout", type=float, default=240, metavar="S",
                        help="hard limit on the benchmark (default: %(default)s)")
    parser.add_argument("--max-size", default="1e9", help="largest size in the sweep (default: %(default)s)")
    parser.add_argument("--config", default="plain", help="bench --config (default: %(default)s)")
    return parser


def cuda_missing() -> str | None:
    """Why there is nothing to check here, or None when torch sees a CUDA device."""
    try:
        import torch
    except ImportError as err:
        return f"torch is not importable ({err})"
    if torch.cuda.is_available():
        return None
    return (f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'}) sees "
            f"{torch.cuda.device_count()} CUDA devices")


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_part(name: str, command: list[str], log: Path, timeout: float) -> tuple[int | None, float]:
    """Run ``command`` in its own process group, its output both here and in ``log``; kill the
    group at ``timeout``. Returns (exit status or None when it ran out of time, seconds)."""
    print(f"\n=== gpu-check: {name} (limit {timeout:.0f} s): {' '.join(command)}", flush=True)
    started = time.perf_counter()
    with open(log, "w") as sink:
        proc = subprocess.Popen(command, cwd=ROOT, env=_environment(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                sink.write(line)
            sys.stdout.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
            os.killpg(proc.pid, signal.SIGKILL)  # pytest's or Inductor's workers too
            proc.wait()
            message = f"\n=== gpu-check: {name} stopped after {timeout:.0f} s\n"
            sys.stdout.write(message)
        reader.join(timeout=10)
        if code is None:
            sink.write(message)
    return code, time.perf_counter() - started


def junit_summary(path: Path) -> tuple[str, bool]:
    """'N passed, N failed, N skipped' from pytest's JUnit XML, the failures named; and whether
    the run holds at least one test and no failure."""
    if not path.exists():
        return "no JUnit XML (pytest did not finish)", False
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return "JUnit XML without a test suite", False
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    lines = [f"{passed} passed, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped"]
    for case in suite.iter("testcase"):
        for tag in ("failure", "error", "skipped"):
            item = case.find(tag)
            if item is not None:
                why = (item.get("message") or "").splitlines()[0][:150] if item.get("message") else ""
                lines.append(f"  {tag}: {case.get('name')}: {why}")
    # on a CUDA machine a test skipped for want of the fused path was not checked
    unchecked = [case for case in suite.iter("testcase") if (case.find("skipped") is not None and
                 "needs the fused path" in (case.find("skipped").get("message") or ""))]  # type: ignore[union-attr]
    if unchecked:
        lines.append(f"  {len(unchecked)} test(s) skipped for want of the fused path: the check fails")
    ok = counts["tests"] > 0 and counts["failures"] == 0 and counts["errors"] == 0 and not unchecked
    return "\n".join(lines), ok


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1e3:.3g}"


def bench_summary(path: Path) -> str:
    """The device, the roofline, a row of medians (ms) per case and the goal lines, from bench.json."""
    if not path.exists():
        return "no bench JSON (the benchmark did not finish)"
    data = json.loads(path.read_text())
    machine = data["machine"]
    ended = "" if data["settings"].get("complete", True) else f", stopped after {len(data['cases'])} case(s)"
    lines = [f"{machine.get('gpu', machine['device'])}, torch {machine['torch']}; roofline "
             f"{data['roofline']['gbps']:.0f} GB/s ({data['roofline']['best']}); "
             f"{data['elapsed_s']:.0f} s{ended}"]
    paths = data["settings"]["paths"]
    lines.append("median step, ms: " + " | ".join(["case", *paths]))
    for case in data["cases"]:
        results = {r["path"]: r for r in case["results"]}
        cells = []
        for p in paths:
            r = results.get(p)
            cells.append("skip" if r is None or r["skipped"] else _ms(r["median_s"]))
        lines.append(f"  {case['name']} ({case['config']}): " + " | ".join(cells))
        reasons = sorted({r["skipped"] for r in case["results"] if r["skipped"]})
        lines += [f"    skipped: {why[:150]}" for why in reasons]
    lines += [f"  goal: {g['text']}" for g in data["goals"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    reason = cuda_missing()
    if reason is not None:
        print(f"gpu-check: no CUDA device: nothing to check ({reason}); exit status {NO_CUDA}, "
              "so that this is never read as a pass", file=sys.stderr)
        return NO_CUDA
    out = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    python = sys.executable

    # -v: the log names each test as it ends, so a run stopped at its limit still says which passed
    tests = [python, "-m", "pytest", "-v", "-p", "no:cacheprovider", "tests/test_cuda.py",
             f"--junitxml={out / 'pytest.xml'}"]
    (out / "pytest.xml").unlink(missing_ok=True)  # a stale file must not pass for this run's
    if importlib.util.find_spec("pytest_timeout") is not None:
        tests.append("--timeout=150")  # one stuck test (a collective, a compile) leaves the rest their time
    tests_code, tests_s = run_part("CUDA tests", tests, out / "pytest.log", args.tests_timeout)

    bench = [python, "-m", "rmsprop", "bench", "--device", "cuda", "--suite", "gpu", "--config", args.config,
             "--max-size", args.max_size, "--time-limit", f"{args.bench_time_limit:g}", "--no-progress",
             "--json", str(out / "bench.json")]
    if importlib.util.find_spec("matplotlib") is not None:
        bench += ["--out", str(out / "bench.png")]
    (out / "bench.json").unlink(missing_ok=True)  # a stale file must not pass for this run's
    bench_code, bench_s = run_part("GPU benchmark", bench, out / "bench.log", args.bench_timeout)

    tests_text, tests_ok = junit_summary(out / "pytest.xml")
    tests_ok = tests_ok and tests_code == 0
    bench_ok = bench_code == 0
    status = {None: "ran out of time", 0: "ok"}
    summary = "\n".join([
        f"gpu-check summary ({out}):",
        f"CUDA tests: {status.get(tests_code, f'exit {tests_code}')} in {tests_s:.0f} s; {tests_text}",
        f"GPU benchmark: {status.get(bench_code, f'exit {bench_code}')} in {bench_s:.0f} s; "
        + bench_summary(out / "bench.json"),
        "gpu-check: " + ("PASSED" if tests_ok and bench_ok else "FAILED"),
    ])
    (out / "summary.txt").write_text(summary + "\n")
    print("\n" + summary, flush=True)
    return 0 if tests_ok and bench_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
