"""`rmsprop bench`: what it prints, writes and refuses. No test looks at a time."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rmsprop.bench.measure import (
    GPU_PATHS,
    SCHEDULE_STEPS_PER_ROUND,
    CaseResult,
    PathResult,
    _make_optimizer,
    bytes_per_param,
    memory_fit,
    memory_needed,
    run_case,
)
from rmsprop.bench.report import Progress, goals, plot
from rmsprop.bench.roofline import Roofline, stream_probes, stream_step, torch_probes
from rmsprop.bench.workloads import (
    GPU_SIZES,
    Case,
    Workload,
    build_cases,
    gpt2_small_shapes,
    resnet50_shapes,
    rl_mlp_shapes,
    split,
)
from rmsprop.cli import main

CASE_FIELDS = {"suite", "name", "config", "schedule", "numel", "tensors", "bytes_per_step", "roofline_s",
               "torch_default", "our_default", "results"}
RESULT_FIELDS = {"path", "state_precision", "bytes_per_step", "median_s", "round_s", "steps_per_round",
                 "gbps", "roofline_pct", "x_roofline_time",
                 "speedup_vs_torch", "first_step_s", "compiles", "recompiles", "recompile_limit_hit",
                 "structures_compiled", "inductor_cache_hits", "peak_extra_bytes", "total_s", "steps",
                 "skipped"}
NUMBERS = ("median_s", "gbps", "roofline_pct", "x_roofline_time", "speedup_vs_torch", "first_step_s",
           "total_s")


def test_quick_suite_writes_json_to_stdout_and_tables_to_stderr(capsys):
    assert main(["bench", "--suite", "quick", "--json", "-"]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)  # stdout holds the JSON and nothing else

    assert data["schema"] == "rmsprop-bench/2"
    assert {"machine", "settings", "roofline", "memory_method", "cases", "goals", "elapsed_s"} <= set(data)
    assert data["settings"]["rounds"] == 2
    assert data["settings"]["time_limit_s"] is None and data["settings"]["memory_bytes"] is None
    assert data["settings"]["paths"] == ["torch-forloop", "torch-foreach", "reference", "foreach"]
    assert [c["name"] for c in data["cases"]] == ["1k in 16 tensors", "10k in 16 tensors", "RL MLP"]
    for case in data["cases"]:
        assert set(case) == CASE_FIELDS
        assert case["bytes_per_step"] == 20 * case["numel"]
        assert case["torch_default"] == "torch-forloop" and case["our_default"] == "foreach"
        assert [r["path"] for r in case["results"]] == data["settings"]["paths"]
        for result in case["results"]:
            assert set(result) == RESULT_FIELDS
            assert result["skipped"] is None
            assert result["state_precision"] == "fp32" and result["bytes_per_step"] == case["bytes_per_step"]
            assert len(result["round_s"]) == 2 and result["steps_per_round"] >= 1
            for key in NUMBERS:
                assert isinstance(result[key], float) and math.isfinite(result[key]), key
            assert isinstance(result["peak_extra_bytes"], int)
            assert result["compiles"] == result["recompiles"] == 0
    assert [g["goal"] for g in data["goals"]] == ["32M-16", "models", "rl", "torch-compile"]
    assert data["roofline"]["gbps"] > 0

    assert "machine:" in err and "roofline:" in err and "goals:" in err
    assert "RL net (4,996 params in 6 tensors): our default step (foreach)" in err


def test_roofline_probes_report_a_positive_bandwidth():
    probes = torch_probes(2**16, reps=2, device=torch.device("cpu"))
    assert [p.name for p in probes] == ["torch add_", "torch addcmul_"]
    assert all(p.gbps > 0 for p in probes)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_stream_probe_builds_and_reports_a_positive_bandwidth():
    probes = stream_probes(2**16, reps=2)
    assert [p.bytes_per_element for p in probes] == [20, 36]
    assert all(p.gbps > 0 for p in probes)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_stream_step_writes_every_array_of_each_entry_as_its_c_source_says():
    gen = torch.Generator().manual_seed(0)
    plain = [[torch.rand(n, generator=gen) for _ in range(3)] for n in (1000, 37)]
    centered = [[torch.rand(n, generator=gen) for _ in range(5)] for n in (37, 1000, 5)]
    expected = []
    for th, g, v in ([t.clone() for t in entry] for entry in plain):
        v = 0.99 * v + 0.01 * g * g
        expected.append([th - 1e-3 * g * v, g, v])
    for th, g, v, m, b in ([t.clone() for t in entry] for entry in centered):
        v, m = 0.99 * v + 0.01 * g * g, 0.99 * m + 0.01 * g
        b = 0.9 * b + g * (v - m * m)
        expected.append([th - 1e-3 * b, g, v, m, b])
    stream_step(plain)()
    stream_step(centered)()
    torch.testing.assert_close(plain + centered, expected)
    stream_step([])()  # no tensors: nothing to do
    for bad in ([plain[0][:2]], [plain[0][:2] + centered[0][2:3]], [[t.double() for t in plain[0]]],
                [plain[0][:2] + [torch.rand(2000)[::2]]], [plain[0], centered[0]]):
        with pytest.raises(ValueError, match="all 3 or all 5 contiguous float32 CPU tensors of one size"):
            stream_step(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_device_cuda_without_cuda_is_a_clear_error(capsys):
    assert main(["bench", "--device", "cuda"]) == 2
    out, err = capsys.readouterr()
    assert "rmsprop bench: error: --device cuda: CUDA is not available" in err
    assert "Traceback" not in err and out == ""


def test_out_without_matplotlib_is_a_clear_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    target = tmp_path / "bench.png"
    assert main(["bench", "--suite", "quick", "--out", str(target)]) == 2
    out, err = capsys.readouterr()
    assert "--out needs matplotlib" in err and "pip install 'rmsprop[bench]'" in err
    assert "Traceback" not in err and out == ""  # refused before running anything
    assert not target.exists()


def test_bad_options_are_refused(capsys):
    for argv in (["--suite", "nope"], ["--paths", "foreach,turbo"], ["--rounds", "0"], ["--max-size", "x"],
                 ["--paths", "fused-int4"], ["--time-limit", "0"], ["--time-limit", "inf"],
                 ["--time-limit", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["bench", *argv])
        assert exit_info.value.code == 2
    assert "is not one of" in capsys.readouterr().err


def test_model_shapes_match_the_architectures():
    gpt2, resnet, rl = (Workload(n, s) for n, s in
                        (("g", gpt2_small_shapes()), ("r", resnet50_shapes()), ("rl", rl_mlp_shapes())))
    assert (gpt2.tensors, gpt2.numel) == (148, 124_439_808)
    assert (resnet.tensors, resnet.numel) == (161, 25_557_032)
    assert (rl.tensors, rl.numel) == (6, 4_996)
    assert resnet50_shapes()[0] == (64, 3, 7, 7) and resnet50_shapes()[-2] == (1000, 2048)


def test_cases_honour_max_size():
    assert sum(s[0] for s in split(1000, 16)) == 1000 and len(split(1000, 16)) == 16
    cases = build_cases(["size", "count"], ["plain", "centered-momentum"], max_size=10**5)
    assert cases and all(c.workload.numel <= 10**5 for c in cases)
    assert {c.workload.tensors for c in cases if c.suite == "count"} == {1, 16, 100, 1000}
    assert {c.bytes_per_step // c.workload.numel for c in cases} == {20, 36}
    assert all(not c.schedule for c in cases)
    assert [c.schedule for c in build_cases(["schedule"], ["plain"], 10**8)] == [True]


def test_compiled_paths_above_the_tensor_limit_are_skipped_not_compiled():
    case = Case("rl", Workload("RL MLP", rl_mlp_shapes()), "plain")
    cr = run_case(case, ["foreach", "fused", "torch-compile"], rounds=1, device=torch.device("cpu"),
                  target_round_s=0.001, compile_max_tensors=2)
    assert cr.results["foreach"].skipped is None
    for path in ("fused", "torch-compile"):
        assert "--compile-max-tensors 2" in cr.results[path].skipped
        assert cr.results[path].median_s is None


def _fake(case: Case, medians: dict[str, float], **extra: PathResult) -> CaseResult:
    results = {p: PathResult(p, median_s=m, round_s=[m], steps_per_round=1, first_step_s=m)
               for p, m in medians.items()}
    return CaseResult(case, {**results, **extra}, "torch-forloop", "foreach" if case.workload.numel < 2**22
                      else "fused")


def test_goal_lines_are_computed_from_the_numbers():
    roofline = Roofline(gbps=20.0, best="probe", probes=[], numel=1)
    big = Case("size", Workload("32M", split(2**25, 16)), "plain")
    rl = Case("rl", Workload("RL MLP", rl_mlp_shapes()), "plain")
    floor = roofline.seconds(big.bytes_per_step)
    lines = {g["goal"]: g for g in goals([_fake(big, {"torch-forloop": 8 * floor, "fused": 2 * floor}),
                                          _fake(rl, {"torch-forloop": 1.0, "foreach": 0.5})], roofline)}
    assert lines["32M-16"]["value"] == pytest.approx(4.0) and lines["32M-16"]["met"] is True
    assert "fused = 2.00× roofline time, 4.00× faster" in lines["32M-16"]["text"]
    assert lines["rl"]["value"] == pytest.approx(0.5) and lines["rl"]["met"] is True
    assert "not measured" in lines["models"]["text"]
    assert "nonfinite" not in lines  # no +skip path was timed
    guarded = {g["goal"]: g for g in goals([_fake(rl, {"foreach": 0.5, "foreach+skip": 0.6})], roofline)}
    assert "RL MLP plain foreach +20%" in guarded["nonfinite"]["text"]


def test_skip_paths_time_the_nonfinite_check(capsys):
    assert main(["bench", "--suite", "quick", "--paths", "foreach,foreach+skip", "--json", "-"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in data["cases"][0]["results"]] == ["foreach", "foreach+skip"]
    assert "nonfinite='skip' costs" in {g["goal"]: g for g in data["goals"]}["nonfinite"]["text"]


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    roofline = Roofline(gbps=20.0, best="probe", probes=[], numel=1)
    shown = []
    for n in (10**3, 10**4, 10**5):
        case = Case("size", Workload(f"{n}", split(n, 16)), "plain")
        shown.append((case, _fake(case, {"torch-forloop": n * 1e-8, "foreach": n * 5e-9},
                                  fused=PathResult("fused", skipped="not run"))))
    target = tmp_path / "bench.png"
    plot(str(target), shown, roofline, {"cpu": "test", "cores": 1, "torch_threads": 1, "torch": "x",
                                         "device": "cpu"})
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_draws_a_bar_on_a_terminal_and_lines_elsewhere():
    class Stream(io.StringIO):
        def __init__(self, tty: bool):
            super().__init__()
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    terminal, log = Stream(True), Stream(False)
    for stream in (terminal, log):
        progress = Progress(total=4, stream=stream)
        progress.start_case(1, 2, "size · 1k in 16 tensors · plain")
        progress("foreach: round 1/2")
        progress.clear()
    assert "\r[######" in terminal.getvalue() and "25%" in terminal.getvalue()
    assert log.getvalue().startswith("bench [1/2] size · 1k in 16 tensors · plain (0:00 elapsed)")
    assert "\r" not in log.getvalue()


@pytest.mark.slow
def test_compiles_and_recompiles_are_counted():
    """torch.compile of torch's step recompiles when a schedule changes its float lr; fused does not."""
    case = Case("schedule", Workload("RL MLP", rl_mlp_shapes()), "plain", schedule=True)
    cr = run_case(case, ["torch-compile", "fused"], rounds=1, device=torch.device("cpu"))
    compiled, fused = cr.results["torch-compile"], cr.results["fused"]
    assert compiled.skipped is None and fused.skipped is None
    assert compiled.compiles >= 1 and fused.compiles == 1
    assert compiled.recompiles >= 1 and fused.recompiles == 0
    assert compiled.steps == fused.steps == 1 + SCHEDULE_STEPS_PER_ROUND


# ---------------------------------------------------------------- narrow state, bitsandbytes, the gpu suite

def _no_bitsandbytes(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes now raises ImportError
    monkeypatch.setitem(sys.modules, "bitsandbytes.optim", None)


def test_new_paths_parse_and_name_their_state_precision():
    from rmsprop.cli import build_parser

    args = build_parser().parse_args(["bench", "--suite", "gpu", "--device", "cpu", "--time-limit", "90",
                                      "--paths", "fused-int8,foreach-bf16,bnb-rmsprop8bit,bnb-rmsprop32bit"])
    assert args.suite == [["gpu"]] and args.time_limit == 90.0
    assert args.paths == ["fused-int8", "foreach-bf16", "bnb-rmsprop8bit", "bnb-rmsprop32bit"]
    params = [torch.nn.Parameter(torch.zeros(3))]
    for path, want in (("fused-int8", (True, False, "int8")), ("foreach-bf16", (False, True, "bf16")),
                       ("fused", (True, False, "param")), ("foreach+skip", (False, True, "param"))):
        group = _make_optimizer(path, params, "plain").param_groups[0]
        assert (group["fused"], group["foreach"], group["state_precision"]) == want, path
    eight_bit = 12 + 2 * (1 + 4 / 256)  # a code per element and a float32 maximum per block of 256
    narrow = ("fused", "fused-bf16", "fused-int8", "bnb-rmsprop8bit")
    assert [bytes_per_param(p, "plain") for p in narrow] == [20, 16, eight_bit, eight_bit]
    assert [bytes_per_param(p, "centered-momentum") for p in ("foreach", "foreach-bf16")] == [36, 24]


def test_bitsandbytes_missing_or_centered_is_a_stated_skip(monkeypatch):
    _no_bitsandbytes(monkeypatch)
    case = Case("rl", Workload("RL MLP", rl_mlp_shapes()), "plain")
    cr = run_case(case, ["foreach", "bnb-rmsprop8bit", "bnb-rmsprop32bit"], rounds=1,
                  device=torch.device("cpu"), target_round_s=0.001)
    assert cr.results["foreach"].skipped is None
    for path in ("bnb-rmsprop8bit", "bnb-rmsprop32bit"):
        assert cr.results[path].skipped.startswith("bitsandbytes is not importable here (ModuleNotFoundError")
        assert cr.results[path].median_s is None
    centered = Case("rl", Workload("RL MLP", rl_mlp_shapes()), "centered-momentum")
    cr = run_case(centered, ["bnb-rmsprop8bit"], rounds=1, device=torch.device("cpu"), target_round_s=0.001)
    assert cr.results["bnb-rmsprop8bit"].skipped == "bitsandbytes' RMSprop has no centered variant"


def test_json_of_the_state_precision_and_peer_paths(monkeypatch, capsys):
    _no_bitsandbytes(monkeypatch)
    paths = ["foreach", "foreach-bf16", "foreach-int8", "bnb-rmsprop8bit", "bnb-rmsprop32bit"]
    assert main(["bench", "--suite", "quick", "--paths", ",".join(paths), "--json", "-"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == "rmsprop-bench/2" and data["settings"]["paths"] == paths
    for case in data["cases"]:
        assert set(case) == CASE_FIELDS
        results = {r["path"]: r for r in case["results"]}
        assert list(results) == paths
        for r in results.values():
            assert set(r) == RESULT_FIELDS
        assert [results[p]["state_precision"] for p in paths] == ["fp32", "bf16", "int8", "int8", "fp32"]
        assert results["foreach-bf16"]["bytes_per_step"] == 16 * case["numel"]
        assert results["foreach-int8"]["bytes_per_step"] == math.ceil(case["numel"] * (14 + 8 / 256))
        for p in ("foreach", "foreach-bf16", "foreach-int8"):
            r = results[p]
            assert r["skipped"] is None and r["median_s"] > 0
            assert r["gbps"] == pytest.approx(r["bytes_per_step"] / r["median_s"] / 1e9)  # its own bytes
        for p in ("bnb-rmsprop8bit", "bnb-rmsprop32bit"):
            assert "bitsandbytes is not importable" in results[p]["skipped"]
            assert results[p]["median_s"] is None
    assert "state-precision" not in {g["goal"] for g in data["goals"]}  # no fused path was timed


def test_narrow_state_and_bitsandbytes_goal_lines():
    roofline = Roofline(gbps=20.0, best="probe", probes=[], numel=1)
    big = Case("gpu", Workload("32M", split(2**25, 16)), "plain")
    lines = {g["goal"]: g for g in goals([_fake(big, {"torch-forloop": 8.0, "fused": 2.0, "fused-bf16": 1.8,
                                                      "fused-int8": 3.0, "bnb-rmsprop8bit": 6.0})], roofline)}
    text = lines["state-precision"]["text"]
    assert "32M plain bf16 0.90×; 32M plain int8 1.50×" in text and lines["state-precision"]["met"] is False
    assert "bnb-rmsprop8bit / fused-int8 2.00×" in lines["bitsandbytes"]["text"]


def test_the_gpu_suite_sweeps_sizes_then_the_model_shapes():
    cases = build_cases(["gpu"], ["plain", "centered-momentum"], max_size=10**9)
    assert {c.suite for c in cases} == {"gpu"} and all(not c.schedule for c in cases)
    plain = [c for c in cases if c.config == "plain"]
    assert [c.workload.numel for c in plain[:4]] == list(GPU_SIZES) == [2**20, 2**25, 10**8, 10**9]
    assert all(c.workload.tensors == 16 for c in plain[:4])
    assert [c.workload.name for c in plain[4:]] == ["ResNet-50", "GPT-2 small"]
    capped = build_cases(["gpu"], ["plain"], max_size=10**8)
    assert [c.workload.numel for c in capped][:4] == [2**20, 2**25, 10**8, 25_557_032]
    every = build_cases(["size", "count", "models", "rl", "schedule"], ["plain"], 10**8)
    assert "gpu" not in {c.suite for c in every}


def test_the_memory_check_keeps_the_sizes_that_fit():
    """Pure: device bytes in, the sizes that run out; every path's state is live at once."""
    def fitting(gib: float, config: str = "plain") -> list[int]:
        return [n for n in GPU_SIZES if memory_fit(n, GPU_PATHS, config, int(gib * 2**30)) is None]

    assert fitting(139) == fitting(80) == list(GPU_SIZES)  # an H200 and an H100 take 1e9 plain
    assert fitting(139, "centered-momentum") == list(GPU_SIZES)
    assert fitting(80, "centered-momentum") == [2**20, 2**25, 10**8]  # three buffers per path
    assert fitting(16) == [2**20, 2**25, 10**8]
    assert fitting(1) == [2**20]
    assert memory_fit(10**9, GPU_PATHS, "plain", None) is None  # CPU: not checked
    # θ and g, every path's state, one step's allowance
    assert memory_needed(10**6, ["foreach"], "plain") == 10**6 * (8 + 4 + 16)
    assert memory_needed(10**6, ["foreach", "fused-bf16"], "centered-momentum") == 10**6 * (8 + 12 + 6 + 16)
    assert memory_fit(10**9, GPU_PATHS, "plain", 16 * 2**30) == (
        "needs about 47.5 GiB for 10 paths' state, θ and g; 16.0 GiB free")


def test_a_case_that_does_not_fit_is_skipped_before_allocating():
    case = Case("gpu", Workload("1e9 in 16 tensors", split(10**9, 16)), "plain")
    cr = run_case(case, ["foreach", "fused"], rounds=1, device=torch.device("cpu"), memory_bytes=2**30)
    for path in ("foreach", "fused"):
        r = cr.results[path]
        assert r.skipped.startswith("needs about") and r.median_s is None and r.steps == 0
        assert r.bytes_per_step == 20 * 10**9
    assert cr.torch_default == "torch-forloop" and cr.our_default in ("fused", "foreach")


def test_json_to_a_file_keeps_every_finished_case_when_the_run_is_stopped(monkeypatch, tmp_path, capsys):
    """scripts/gpu_check.py stops a benchmark that runs past its limit: what it measured must survive.
    The file is rewritten whole after each case ("complete": false until the run ends)."""
    import rmsprop.bench

    target = tmp_path / "bench.json"
    real, calls = rmsprop.bench.run_case, []

    def stopped_at_the_third_case(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a signal would stop it
        return real(*args, **kwargs)

    monkeypatch.setattr(rmsprop.bench, "run_case", stopped_at_the_third_case)
    with pytest.raises(KeyboardInterrupt):
        main(["bench", "--suite", "quick", "--paths", "foreach", "--json", str(target)])
    data = json.loads(target.read_text())
    assert [c["name"] for c in data["cases"]] == ["1k in 16 tensors", "10k in 16 tensors"]
    assert data["settings"]["complete"] is False and data["goals"] is not None
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # no partial file left beside it
    monkeypatch.setattr(rmsprop.bench, "run_case", real)
    assert main(["bench", "--suite", "quick", "--paths", "foreach", "--json", str(target)]) == 0
    data = json.loads(target.read_text())
    assert data["settings"]["complete"] is True and len(data["cases"]) == 3
    capsys.readouterr()


def test_time_limit_skips_the_cases_not_yet_started(capsys):
    argv = ["bench", "--suite", "quick", "--paths", "foreach", "--time-limit", "1e-9", "--json", "-"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["settings"]["time_limit_s"] == 1e-9
    for case in data["cases"]:
        (result,) = case["results"]
        assert result["skipped"].startswith("not started: --time-limit 1e-09 s passed")


# ---------------------------------------------------------------- scripts/gpu_check.py (make gpu-check)

ROOT = Path(__file__).resolve().parent.parent


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_without_cuda_refuses_with_status_2_and_starts_nothing(tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # hides any GPU: the same answer everywhere
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out-dir", str(out)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "gpu-check: no CUDA device: nothing to check" in proc.stderr
    assert "pytest" not in proc.stdout + proc.stderr and not out.exists()  # neither part started


def test_gpu_check_runs_both_parts_and_fails_unless_both_pass(monkeypatch, tmp_path, capsys):
    gpu_check = _gpu_check()
    commands = []

    def fake_part(name, command, log, timeout):
        commands.append((name, command, timeout))
        return (0 if name == "CUDA tests" else None), 1.0  # the benchmark "runs out of time"

    monkeypatch.setattr(gpu_check, "cuda_missing", lambda: None)
    monkeypatch.setattr(gpu_check, "run_part", fake_part)
    assert gpu_check.main(["--out-dir", str(tmp_path), "--bench-time-limit", "100"]) == 1
    (tests_name, tests, tests_limit), (bench_name, bench, bench_limit) = commands
    assert tests[1:4] == ["-m", "pytest", "-v"] and "tests/test_cuda.py" in tests and tests_limit == 240
    assert f"--junitxml={tmp_path / 'pytest.xml'}" in tests
    joined = " ".join(bench)
    assert "-m rmsprop bench --device cuda --suite gpu --config plain --max-size 1e9 --time-limit 100" \
        in joined
    assert f"--json {tmp_path / 'bench.json'}" in joined and bench_limit == 240
    summary = (tmp_path / "summary.txt").read_text()
    assert "no JUnit XML" in summary and "GPU benchmark: ran out of time" in summary
    assert summary.rstrip().endswith("gpu-check: FAILED") and "gpu-check: FAILED" in capsys.readouterr().out


def test_gpu_check_summaries_read_pytest_and_bench_output(tmp_path, capsys):
    gpu_check = _gpu_check()
    junit = tmp_path / "pytest.xml"
    junit.write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="3" failures="1" '
                     'errors="0" skipped="1"><testcase name="test_a"/><testcase name="test_b">'
                     '<failure message="AssertionError: param: the paths part">trace</failure></testcase>'
                     '<testcase name="test_c"><skipped message="needs NCCL"/></testcase></testsuite>'
                     '</testsuites>')
    text, ok = gpu_check.junit_summary(junit)
    assert not ok and text.startswith("1 passed, 1 failed, 1 skipped")
    assert "failure: test_b: AssertionError: param: the paths part" in text
    assert "skipped: test_c: needs NCCL" in text
    # passing tests and an intended skip pass; a test skipped for want of the fused path does not
    for skip, passes in (("needs NCCL", True), ("needs the fused path: compiling is turned off", False)):
        junit.write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="2" failures="0" '
                         f'errors="0" skipped="1"><testcase name="test_a"/><testcase name="test_c"><skipped '
                         f'message="{skip}"/></testcase></testsuite></testsuites>')
        assert gpu_check.junit_summary(junit)[1] is passes

    assert main(["bench", "--suite", "quick", "--paths", "foreach,bnb-rmsprop8bit", "--json",
                 str(tmp_path / "bench.json")]) == 0
    capsys.readouterr()
    text = gpu_check.bench_summary(tmp_path / "bench.json")
    assert "median step, ms: case | foreach | bnb-rmsprop8bit" in text
    assert "RL MLP (plain): " in text and "| skip" in text and "goal: RL net" in text
    assert gpu_check.bench_summary(tmp_path / "missing.json").startswith("no bench JSON")
    data = json.loads((tmp_path / "bench.json").read_text())
    data["settings"]["complete"] = False  # as a run stopped at its limit leaves it
    (tmp_path / "bench.json").write_text(json.dumps(data))
    assert ", stopped after 3 case(s)" in gpu_check.bench_summary(tmp_path / "bench.json").splitlines()[0]


def test_gpu_check_stops_a_part_at_its_time_limit(tmp_path):
    gpu_check = _gpu_check()
    sleeper = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
    code, seconds = gpu_check.run_part("sleeper", sleeper, tmp_path / "log", timeout=2)
    assert code is None and seconds < 30
    assert "up" in (tmp_path / "log").read_text() and "stopped after 2 s" in (tmp_path / "log").read_text()
    code, _ = gpu_check.run_part("quick", [sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "l2", 30)
    assert code == 3
