"""The whole pipeline, reduced (a few images and steps): every stage leaves its artefacts and a
finite mIoU. Whether adaptation helps is measured by the full demo (docs/demo.md), not here."""
import json
import math
import os

import cv2
import pytest

from tools.synthetic import main as synthetic
from demo import Demo, build_parser, main
from utils.cli import UserError, run


def check_stages(stages, rounds_at_most):
    """The stages of a quick demo: the black box, the adapted model's stages, the oracle; every one
    scored on the test split and saying how its checkpoint was kept."""
    names = list(stages)
    rounds = [n for n in names if n.startswith("smhm_round_")]
    assert names[:2] == ["black_box", "baseline"] and names[2:2 + len(rounds)] == rounds
    assert 1 <= len(rounds) <= rounds_at_most and names[2 + len(rounds)] == "adapted"
    for name, stage in stages.items():
        test = stage["test"]
        assert math.isfinite(test["miou"]) and 0 <= test["miou"] <= 100 and len(test["per_class"]) == 19
        assert os.path.isfile(stage["weights"]) and set(test["label_free"]) >= {"flip_im", "flip"}
        # The black box and the oracle are made with labels; adaptation selects without them.
        assert stage["selected_by"] == ("val-miou" if name in ("black_box", "oracle") else "confidence")


def test_quick_demo_runs_every_stage(tmp_path):
    out = tmp_path / "demo"
    assert main(["--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    stages = results["stages"]
    check_stages(stages, 2)
    assert list(stages)[-1] == "oracle"
    # The black box is the exported ONNX file: it is scored as it is, and the pseudo-labels come from it.
    assert stages["black_box"]["weights"] == str(out / "weights" / "source_only.onnx")
    adapt = out / "adapt"
    summary = json.loads((adapt / "pseudo_labels" / "summary.json").read_text())
    assert summary["restore_from"] == stages["black_box"]["weights"]
    assert os.listdir(adapt / "hard_patches" / "patches")
    assert (adapt / "runs" / "smhm" / "smhm_rounds.csv").is_file()
    # adapt.py's outputs: the report compares the two on the test split, the labels giving an interval.
    report = json.loads((adapt / "report.json").read_text())
    assert report["split"] == "test" and report == results["report"]
    for model in ("black_box", "adapted"):
        assert set(report[model]["label_free"]) >= {"flip_im"} and math.isfinite(report[model]["miou"])
    assert report["adapted"]["miou"] == pytest.approx(stages["adapted"]["test"]["miou"], abs=0.01)
    low, high = report["difference_ci95"]
    assert low <= report["difference"] <= high
    assert report["difference"] == pytest.approx(report["adapted"]["miou"] - report["black_box"]["miou"], abs=0.011)
    assert (adapt / "adapted.onnx").is_file() and (adapt / "student.pth").is_file()
    picture = cv2.imread(str(adapt / "report.png"))
    assert picture is not None and picture.shape[1] > 4 * 64
    # A second run finds every stage done and only scores again; fewer rounds would replace its result.
    assert main(["--quick", "--out", str(out)]) == 0
    with pytest.raises(UserError, match="--rounds 1: --out holds round 2 .*add --fresh to start over"):
        main(["--quick", "--out", str(out), "--rounds", "1"])


def test_quick_demo_with_a_transformer_student(tmp_path):
    """``--student``: baseline, smhm rounds and oracle are SegFormer-B0 networks; the black box stays DeepLabv2."""
    from utils.torch_files import load_torch_file

    out = tmp_path / "demo"
    assert main(["--quick", "--student", "segformer_b0", "--rounds", "1", "--out", str(out)]) == 0
    stages = json.loads((out / "results.json").read_text())["stages"]
    check_stages(stages, 1)
    for stage in stages:
        if stage != "black_box":
            keys = load_torch_file(stages[stage]["weights"], what="weights").keys()
            assert any("encoder" in k for k in keys), (stage, list(keys)[:5])


def test_another_seed_goes_beside_the_first_demo_or_is_refused(tmp_path, capsys):
    assert Demo(build_parser().parse_args([])).out == "./experiments/demo"
    assert Demo(build_parser().parse_args(["--seed", "1"])).out == "./experiments/demo_seed1"
    assert Demo(build_parser().parse_args(["--quick", "--seed", "2"])).out == "./experiments/demo_seed2_quick"
    assert Demo(build_parser().parse_args(["--student", "segformer_b0", "--seed", "1"])).out == \
        "./experiments/demo_segformer_b0_seed1"
    out = tmp_path / "demo"  # holds the benchmark of seed 0
    assert synthetic(["--root", str(out / "data"), "--seed", "0", "--num-source", "1", "--num-train", "1",
                      "--num-val", "1", "--num-test", "1", "--size", "64x32", "--workers", "0"]) == 0
    with pytest.raises(SystemExit) as exit_info:
        run(main, ["--quick", "--seed", "1", "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--fresh" in err and "another --seed" in err and "Traceback" not in err
    # --fresh deletes a demo's folder (the benchmark's manifest in data/), not one that holds anything else.
    mine = tmp_path / "mine"
    (mine / "data").mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="--fresh: --out .* holds notes.txt, which no demo writes"):
        main(["--quick", "--seed", "1", "--out", str(mine), "--fresh"])
    assert (mine / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("target, conditions", [("acdc", {"fog", "night"}), ("darkzurich", set())])
def test_quick_demo_on_an_adverse_condition_target(tmp_path, capsys, target, conditions):
    """``--target acdc``: the benchmark in ACDC's layout (fog and night), no label conversion, scores per
    condition; Dark Zurich has no train labels, so no oracle (and one condition, night, in val)."""
    out = tmp_path / "demo"
    assert main(["--quick", "--target", target, "--rounds", "1", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    stages = results["stages"]
    check_stages(stages, 1)
    assert (list(stages)[-1] == "oracle") == (target == "acdc") and results["settings"]["target"] == target
    for stage in stages.values():
        assert set(stage["test"].get("conditions", {})) == conditions
        assert all(math.isfinite(c["miou"]) for c in stage["test"].get("conditions", {}).values())
    assert (out / "data" / target / "rgb_anon").is_dir() and not (out / "data" / "cityscapes").exists()
    assert cv2.imread(str(out / "adapt" / "report.png")) is not None
    printed = capsys.readouterr().out
    assert "transfer_trainid" not in printed and all(name in printed for name in conditions)
