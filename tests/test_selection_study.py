"""``python -m tools.selection_study`` on a constructed demo folder whose answers are known: the
regret of each criterion inside a stage, and of the round the guard kept on the test split."""
import json
import os

import pytest

from tools import selection_study
from utils.label_free import CRITERIA


def write_stage(folder, confidences, mious, test_row=True):
    os.makedirs(folder)
    with open(os.path.join(folder, "label_free_record.csv"), "w") as f:
        f.write(",".join(["step", "weights", *CRITERIA]) + "\n")
        for step, value in enumerate(confidences, 1):
            f.write(",".join([str(step), folder, *(f"{value:.3f}" for _ in CRITERIA)]) + "\n")
        if test_row:  # a test of the same folder is no validation: left out
            f.write(",".join(["test", "w.pth", *("9" for _ in CRITERIA)]) + "\n")
    with open(os.path.join(folder, "miou_record.csv"), "w") as f:
        f.write("step,weights,road,Mean\n")
        for step, miou in enumerate(mious, 1):
            f.write(f"{step},{folder},0,{miou}\n")
        if test_row:
            f.write("test,w.pth,0,99\n")


def test_the_study_measures_regret_inside_stages_and_across_rounds(tmp_path, capsys):
    demo = tmp_path / "demo"
    # every score rises to step 3 while val mIoU peaks at step 2: regret 30 - 25 = 5; last picks step 3 too
    write_stage(str(demo / "adapt" / "runs" / "baseline" / "baseline"), [0.1, 0.2, 0.3], [20.0, 30.0, 25.0])
    write_stage(str(demo / "adapt" / "runs" / "smhm" / "smhm_round_1"), [0.3, 0.2], [31.0, 29.0], test_row=False)
    stages = {"black_box": 22.0, "smhm_round_1": 21.0, "smhm_round_2": 24.0, "adapted": 21.0}
    (demo / "results.json").write_text(json.dumps({"stages": {k: {"test": {"miou": v}} for k, v in stages.items()}}))

    result = selection_study.main([str(demo)])
    assert result["stages"] == 2
    confidence = result["criteria"]["confidence"]
    assert confidence["mean_regret"] == pytest.approx(2.5) and confidence["worst_regret"] == pytest.approx(5.0)
    assert confidence["spearman"] == pytest.approx(0.5)  # ranks 0,1,2 against 0,2,1; two validations give none
    assert result["criteria"]["last"]["mean_regret"] == pytest.approx((5.0 + 2.0) / 2)
    [rounds] = result["rounds"]
    assert rounds["regret"] == pytest.approx(3.0) and rounds["below"]  # kept 21 < black box 22 < best round 24
    assert "BELOW the black box" in capsys.readouterr().out
