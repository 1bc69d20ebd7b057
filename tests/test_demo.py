"""The whole pipeline, reduced (a few images and steps): every stage leaves its artefacts and a
finite mIoU. Whether adaptation helps is measured by the full demo (docs/demo.md), not here."""
import json
import math
import os

import cv2

from demo import main


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
    assert os.listdir(out / "hard_patches" / "patches")
    assert (out / "runs" / "smhm" / "smhm_rounds.csv").is_file()
    picture = cv2.imread(str(out / "predictions.png"))
    assert picture is not None and picture.shape[1] > 4 * 64
    # A second run finds every stage done and only re-evaluates.
    assert main(["--quick", "--out", str(out)]) == 0
