"""tools/gpu_check.py: the GPU check, rehearsed on a CPU (every part, tiny), and its driver: time
limits, a part that fails or overruns, where the files go."""
import json
import os
import sys

import pytest

from tools import gpu_check


@pytest.mark.slow
def test_the_tiny_rehearsal_of_the_method_and_the_step_check(tmp_path, capsys):
    """The two parts of the GPU check that are this tool's own code, rehearsed on a CPU; the
    benchmark parts run tools/benchmark.py (tests/test_benchmark.py) with the commands checked below."""
    out = tmp_path / "out"
    assert gpu_check.main(["--tiny", "--out", str(out), "--parts", "method,step_check"]) == 0
    files = sorted(os.listdir(out))
    assert all(f.startswith("gpu-") for f in files)
    found = {f.split("-", 4)[-1]: out / f for f in files}  # gpu-<date>-<part>.json
    assert set(found) == {"method.json", "step_check.json", "check.json", "check.log"}
    found = {name.rsplit(".", 1)[0]: path for name, path in found.items() if name.endswith(".json")}
    summary = json.loads(found["check"].read_text())
    assert {part: entry["status"] for part, entry in summary["parts"].items()} == {"method": "ok", "step_check": "ok"}
    assert summary["device"]["torch"] and summary["device"]["pytorch_lightning"] and summary["date"]

    method = json.loads(found["method"].read_text())
    stages = [s["stage"] for s in method["stages"]]
    assert stages[0] == "synthetic benchmark" and stages[-2:] == ["test", "predict"]
    for name in ("source_only", "provider: export to ONNX", "pseudo-labels", "baseline", "hard patches", "smhm", "predict"):
        assert name in stages
    assert all(s["status"] == "ok" for s in method["stages"]) and 0 <= method["test_miou"] <= 100

    check = json.loads(found["step_check"].read_text())
    assert check["verdict"].startswith("compile_step: same as eager")
    assert check["variants"]["compile_step"]["losses"] == pytest.approx(check["variants"]["eager"]["losses"])
    assert "gpu check on" in capsys.readouterr().out


@pytest.mark.parametrize("tiny", [False, True])
def test_the_benchmark_parts_are_commands_the_benchmark_takes(tmp_path, tiny):
    from tools import benchmark

    opts = gpu_check.build_parser().parse_args(["--out", str(tmp_path)] + (["--tiny", "--size", "64x32"] if tiny else
                                                                           ["--size", "1024x512"]))
    plan = gpu_check.plan(opts)
    paths = gpu_check.part_paths(str(tmp_path), "2026-01-01")
    commands = gpu_check.commands(opts, plan, paths, cuda=not tiny)
    assert set(commands) == set(gpu_check.PARTS)
    parsed = {part: benchmark.build_parser().parse_args(commands[part][3:])
              for part in ("benchmark", "compiled", "compiled_more")}
    assert parsed["benchmark"].stages == list(benchmark.STAGES) and parsed["benchmark"].input_size == opts.size
    assert parsed["benchmark"].configs[:2] == ["published", "fast"] and parsed["benchmark"].keep_going
    assert parsed["compiled"].stages == ["smhm", "baseline"]  # smhm first: compiling it takes longest
    assert "compile_step" in parsed["compiled"].configs
    assert ("compile_step_cudagraphs" in parsed["compiled_more"].configs) == (not tiny)  # no CUDA graphs on a CPU
    assert parsed["compiled"].compile_backend == ("eager" if tiny else "inductor")
    assert all(p.json.startswith(str(tmp_path)) for p in parsed.values())
    assert len(set(paths.values())) == 7  # a JSON file per part, the summary and the log


def test_a_part_that_fails_or_overruns_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch, capsys):
    python = [sys.executable, "-c"]
    commands = {"benchmark": python + ["print('measured')"], "method": python + ["import sys; sys.exit(3)"],
                "step_check": python + ["import time; time.sleep(120)"], "compiled": python + ["print('compiled')"],
                "compiled_more": python + ["print('more')"]}
    monkeypatch.setattr(gpu_check, "commands", lambda *args: commands)
    # A 10 s budget, 2 s planned per part: the hanging part gets what the others leave it, about 5 s.
    monkeypatch.setattr(gpu_check, "BUDGET_S", 10)
    monkeypatch.setattr(gpu_check, "PLANNED", {part: 2 for part in gpu_check.PARTS})
    monkeypatch.setattr(gpu_check, "MIN_PART_S", 1)
    out = tmp_path / "out"
    assert gpu_check.main(["--tiny", "--out", str(out), "--budget", "10"]) == 1
    summary = json.loads(next(out.glob("gpu-*-check.json")).read_text())
    statuses = {part: entry["status"] for part, entry in summary["parts"].items()}
    assert statuses["benchmark"] == "ok" and statuses["method"] == "failed (exit code 3)"
    assert statuses["step_check"].startswith("timed out after")
    assert statuses["compiled"] == "ok" and summary["seconds"] < 20
    log = next(out.glob("gpu-*-check.log")).read_text()
    assert "measured" in log and "compiled" in log
    assert "step_check  timed out" in capsys.readouterr().out


def test_files_go_to_out_else_experiments(monkeypatch):
    monkeypatch.setenv("OUT", "/elsewhere")  # an environment variable does not redirect them
    assert gpu_check.build_parser().parse_args([]).out == os.path.join("experiments", "gpu_check")
    assert gpu_check.build_parser().parse_args(["--out", "x"]).out == "x"


def test_size_and_tiny_mode_come_from_flags(monkeypatch):
    seen = {}
    monkeypatch.setattr(gpu_check, "drive", lambda opts: seen.setdefault("opts", opts) and 0)
    gpu_check.main(["--tiny", "--size", "96x48"])
    opts = seen["opts"]
    assert opts.tiny and opts.size == (96, 48)
    plan = gpu_check.plan(opts)
    assert plan["arch"] == "deeplabv2_tiny" and plan["size"] == "96x48"
    assert gpu_check.plan(gpu_check.build_parser().parse_args(["--size", "1024x512"]))["arch"] == "deeplabv2_r101"
