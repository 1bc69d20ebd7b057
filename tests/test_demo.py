"""The whole pipeline, reduced (a few images and steps): every stage leaves its artefacts and a
finite mIoU. Whether adaptation helps is measured by the full demo (docs/demo.md), not here."""
import json
import math
import os

import cv2
import pytest

from tools.synthetic import main as synthetic
from demo import Demo, build_parser, main
from utils.cli import run


def test_quick_demo_runs_every_stage(tmp_path):
    out = tmp_path / "demo"
    assert main(["--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    stages = results["stages"]
    assert list(stages) == ["source_only", "baseline", "smhm_round_1", "smhm_round_2", "oracle"]
    for stage in stages.values():
        assert math.isfinite(stage["miou"]) and 0 <= stage["miou"] <= 100
        assert len(stage["per_class"]) == 19 and os.path.isfile(stage["weights"])
    # Artefacts of the stages in between.
    assert (out / "data" / "cityscapes" / "gtFine2" / "val").is_dir()
    assert (out / "pseudo_label" / "easy.txt").is_file() and (out / "pseudo_label" / "hard.txt").is_file()
    # The black box is the exported ONNX file: the pseudo-labels come from it, not from the weights.
    summary = json.loads((out / "pseudo_label" / "summary.json").read_text())
    assert summary["restore_from"] == str(out / "weights" / "source_only.onnx")
    assert os.path.getsize(summary["restore_from"]) > 0
    assert os.listdir(out / "hard_patches" / "patches")
    assert (out / "runs" / "smhm" / "smhm_rounds.csv").is_file()
    picture = cv2.imread(str(out / "predictions.png"))
    assert picture is not None and picture.shape[1] > 4 * 64
    # A second run finds every stage done and only re-evaluates.
    assert main(["--quick", "--out", str(out)]) == 0


def test_quick_demo_with_a_transformer_student(tmp_path):
    """``--student``: baseline, smhm rounds and oracle are SegFormer-B0 networks; the provider stays DeepLabv2."""
    from utils.torch_files import load_torch_file

    out = tmp_path / "demo"
    assert main(["--quick", "--student", "segformer_b0", "--rounds", "1", "--out", str(out)]) == 0
    stages = json.loads((out / "results.json").read_text())["stages"]
    assert list(stages) == ["source_only", "baseline", "smhm_round_1", "oracle"]
    assert all(math.isfinite(stage["miou"]) for stage in stages.values())
    for stage, family_key in (("source_only", "layer1"), ("baseline", "encoder"), ("smhm_round_1", "encoder"),
                              ("oracle", "encoder")):
        keys = load_torch_file(stages[stage]["weights"], what="weights").keys()
        assert any(family_key in k for k in keys), (stage, list(keys)[:5])
    assert not any("encoder" in k for k in load_torch_file(stages["source_only"]["weights"], what="weights"))


def test_another_seed_goes_beside_the_first_demo_or_is_refused(tmp_path, capsys):
    assert Demo(build_parser().parse_args([])).out == "./experiments/demo"
    assert Demo(build_parser().parse_args(["--seed", "1"])).out == "./experiments/demo_seed1"
    assert Demo(build_parser().parse_args(["--quick", "--seed", "2"])).out == "./experiments/demo_seed2_quick"
    assert Demo(build_parser().parse_args(["--student", "segformer_b0", "--seed", "1"])).out == \
        "./experiments/demo_segformer_b0_seed1"
    out = tmp_path / "demo"  # holds the benchmark of seed 0
    assert synthetic(["--root", str(out / "data"), "--seed", "0", "--num-source", "1", "--num-train", "1",
                      "--num-val", "1", "--size", "64x32", "--workers", "0"]) == 0
    with pytest.raises(SystemExit) as exit_info:
        run(main, ["--quick", "--seed", "1", "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--fresh" in err and "another --seed" in err and "Traceback" not in err


@pytest.mark.parametrize("target, conditions", [("acdc", {"fog", "night"}), ("darkzurich", set())])
def test_quick_demo_on_an_adverse_condition_target(tmp_path, capsys, target, conditions):
    """``--target acdc``: the benchmark in ACDC's layout (fog and night), no label conversion, scores per
    condition; Dark Zurich has no train labels, so no oracle (and one condition, night, in val)."""
    out = tmp_path / "demo"
    assert main(["--quick", "--target", target, "--rounds", "1", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    stages = results["stages"]
    expected = ["source_only", "baseline", "smhm_round_1"] + (["oracle"] if target == "acdc" else [])
    assert list(stages) == expected and results["settings"]["target"] == target
    for stage in stages.values():
        assert math.isfinite(stage["miou"])
        assert set(stage.get("conditions", {})) == conditions
        assert all(math.isfinite(c["miou"]) for c in stage.get("conditions", {}).values())
    assert (out / "data" / target / "rgb_anon").is_dir() and not (out / "data" / "cityscapes").exists()
    assert cv2.imread(str(out / "predictions.png")) is not None
    printed = capsys.readouterr().out
    assert "transfer_trainid" not in printed and all(name in printed for name in conditions)
