"""`rmsprop bench`: what it prints, writes and refuses. No test looks at a time."""

from __future__ import annotations

import io
import json
import math
import shutil
import sys

import pytest
import torch

from rmsprop.bench.measure import SCHEDULE_STEPS_PER_ROUND, CaseResult, PathResult, run_case
from rmsprop.bench.report import Progress, goals, plot
from rmsprop.bench.roofline import Roofline, stream_probes, torch_probes
from rmsprop.bench.workloads import (
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
RESULT_FIELDS = {"path", "median_s", "round_s", "steps_per_round", "gbps", "roofline_pct", "x_roofline_time",
                 "speedup_vs_torch", "first_step_s", "compiles", "recompiles", "recompile_limit_hit",
                 "structures_compiled", "inductor_cache_hits", "peak_extra_bytes", "total_s", "steps",
                 "skipped"}
NUMBERS = ("median_s", "gbps", "roofline_pct", "x_roofline_time", "speedup_vs_torch", "first_step_s",
           "total_s")


def test_quick_suite_writes_json_to_stdout_and_tables_to_stderr(capsys):
    assert main(["bench", "--suite", "quick", "--json", "-"]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)  # stdout holds the JSON and nothing else

    assert data["schema"] == "rmsprop-bench/1"
    assert {"machine", "settings", "roofline", "memory_method", "cases", "goals", "elapsed_s"} <= set(data)
    assert data["settings"]["rounds"] == 2
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
    for argv in (["--suite", "nope"], ["--paths", "foreach,turbo"], ["--rounds", "0"], ["--max-size", "x"]):
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
