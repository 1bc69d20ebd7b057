"""A black box known only by its label maps (``modules/label_map_box.py``): ``--mode test`` scores the
folder as it scores the network whose predictions it holds, per condition too, and ``--mode
predict`` pictures it; a missing or foreign map is one line."""
import csv
import glob
import os

import cv2
import numpy as np
import pytest

import main as main_script
from tests.fixtures import (assert_one_line_refusal, make_acdc, make_cityscapes, make_image_folder, run_refused,
                            tiny_weights)
from utils.io import read_label
from utils.metrics import image_confusion, scores_from_confusion

COMMON = ["--arch", "deeplabv2_tiny", "--input-size", "64x32", "--num-workers", "0", "--accelerator", "cpu",
          "--devices", "1", "--test-batch-size", "1"]


@pytest.fixture(scope="module")
def acdc(tmp_path_factory):
    """An ACDC tree (two conditions, labelled val), weights, and their predictions as label maps."""
    root = tmp_path_factory.mktemp("box")
    make_acdc(str(root / "acdc"), conditions=("fog", "night"), val=2)
    weights = tiny_weights(str(root / "w.pth"))
    target = ["--target-dataset", "acdc", "--data-dir", str(root / "acdc"), "--conditions", "fog,night"]
    main_script.main(["--mode", "predict", "--restore-from", weights, *target, "--save-predictions",
                      str(root / "pred"), "--log-tb-dir", str(root / "runs"), *COMMON])
    return {"root": root, "weights": weights, "target": target, "maps": str(root / "pred" / "train_ids")}


def files(folder):
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, names in os.walk(folder) for f in names}


def test_label_maps_score_as_the_network_they_came_from(acdc, tmp_path):
    def test(restore_from, name):
        return main_script.main(["--mode", "test", "--restore-from", restore_from, *acdc["target"],
                                 "--experiment-name", name, "--log-tb-dir", str(tmp_path / "exp"), *COMMON])

    network, maps = test(acdc["weights"], "network"), test(acdc["maps"], "maps")
    assert maps["per_class"] == pytest.approx(network["per_class"], nan_ok=True)
    assert maps["miou"] == pytest.approx(network["miou"])
    for condition in ("fog", "night"):
        assert maps["conditions"][condition]["miou"] == pytest.approx(network["conditions"][condition]["miou"])
    for record in ("miou_record.csv", "miou_record_fog.csv"):  # the rows name the folder they scored
        with open(tmp_path / "exp" / "basic" / "maps" / record, newline="") as f:
            rows = list(csv.reader(f))
        assert len(rows) == 2 and rows[1][:2] == ["test", acdc["maps"]]
    assert not (tmp_path / "exp" / "basic" / "maps" / "label_free_record.csv").exists()  # maps carry no scores


def test_label_maps_are_pictured_by_predict(acdc, tmp_path):
    out = str(tmp_path / "again")
    argv = ["--mode", "predict", "--restore-from", acdc["maps"], *acdc["target"], "--save-predictions", out,
            "--log-tb-dir", str(tmp_path / "runs"), *COMMON]
    assert main_script.main(argv) == {"save": out, "images": 4, "predicted": 4, "skipped": 0}
    assert files(os.path.join(out, "train_ids")) == files(acdc["maps"])
    assert len(files(os.path.join(out, "pictures"))) == 4
    assert main_script.main(argv)["skipped"] == 4  # a rerun resumes


def test_a_missing_or_foreign_label_map_is_one_line(acdc, tmp_path, capsys):
    maps = tmp_path / "maps"
    for rel, data in files(acdc["maps"]).items():
        os.makedirs(maps / os.path.dirname(rel), exist_ok=True)
        (maps / rel).write_bytes(data)
    first = sorted(files(str(maps)))[0]
    os.remove(maps / first)
    out = tmp_path / "exp"
    argv = ["--mode", "test", "--restore-from", str(maps), *acdc["target"], "--log-tb-dir", str(out), *COMMON]
    assert_one_line_refusal(*run_refused(capsys, main_script.main, argv), str(maps / first), str(out))
    cv2.imwrite(str(maps / first), np.full((32, 64), 40, np.uint8))
    assert_one_line_refusal(*run_refused(capsys, main_script.main, argv), "label values outside 0..18 and 255", str(out))


def test_a_pixel_without_a_class_is_a_miss_of_its_class(tmp_path):
    """Known answer: the maps are the labels, but with every second road pixel left without a class
    (255): road IoU 50 %, every other class present 100 %."""
    images, labels, maps = tmp_path / "images", tmp_path / "labels", tmp_path / "maps"
    relative = make_image_folder(str(images), str(labels))
    for rel in relative:
        label = read_label(str(labels / (os.path.splitext(rel)[0] + ".png")))
        road = np.flatnonzero(label.ravel() == 0)[::2]
        label.ravel()[road] = 255
        os.makedirs(maps / os.path.dirname(rel), exist_ok=True)
        cv2.imwrite(str(maps / (os.path.splitext(rel)[0] + ".png")), label)
    scores = main_script.main(["--mode", "test", "--restore-from", str(maps), "--target-dataset", "folder",
                               "--data-dir", str(images), "--label-dir", str(labels),
                               "--log-tb-dir", str(tmp_path / "exp"), *COMMON])
    present = [v for v in scores["per_class"] if not np.isnan(v)]
    assert scores["per_class"][0] == pytest.approx(50.0, abs=0.5) and present.count(100.0) == len(present) - 1


def test_what_label_maps_cannot_do_is_one_line(acdc, tmp_path, capsys):
    out = tmp_path / "exp"
    test = ["--mode", "test", "--restore-from", acdc["maps"], *acdc["target"], "--log-tb-dir", str(out), *COMMON]
    for extra, said in ((["--flip-when-test"], "--flip-when-test does nothing"),
                        (["--save-predictions", str(tmp_path / "p")], "--mode predict pictures the maps")):
        assert_one_line_refusal(*run_refused(capsys, main_script.main, test + extra), said, str(out))
    # predictions written around the maps they read (--overwrite would delete them) are refused
    around = os.path.dirname(acdc["maps"])
    predict = ["--mode", "predict", "--restore-from", acdc["maps"], *acdc["target"], "--save-predictions", around,
               "--overwrite", "--log-tb-dir", str(out), *COMMON]
    code, err = run_refused(capsys, main_script.main, predict)
    assert code == 2 and "holds the label maps" in err and len(files(acdc["maps"])) == 4


def test_a_record_of_another_format_is_refused_before_any_work(acdc, tmp_path, capsys):
    folder = tmp_path / "exp" / "basic" / "none"
    folder.mkdir(parents=True)
    (folder / "miou_record_fog.csv").write_text("road,sidewalk\n1,2\n")
    argv = ["--mode", "test", "--restore-from", acdc["weights"], *acdc["target"], "--log-tb-dir", str(tmp_path / "exp"),
            *COMMON]
    code, err = run_refused(capsys, main_script.main, argv)
    assert code == 2 and "miou_record_fog.csv has another header" in err
    assert sorted(os.listdir(folder)) == ["miou_record_fog.csv"]  # nothing scored, nothing appended


def test_the_pseudo_label_stage_output_is_a_folder_of_label_maps(tmp_path):
    """Cityscapes names its pseudo-labels <city>/<stem>_gtFine_labelIds.png under label_ids/<split>/:
    such a folder is scored as the maps it holds (here the val split labelled by the weights)."""
    import generate_pseudo_labels

    tree = make_cityscapes(str(tmp_path / "cs"), train=1, val=2)
    weights = tiny_weights(str(tmp_path / "w.pth"))
    data = ["--image-root", tree["image_root"], "--list-root", str(tmp_path / "lists")]
    os.makedirs(tmp_path / "lists")
    generate_pseudo_labels.main([*data, "--split", "val", "--restore-from", weights, "--save", str(tmp_path / "pl"),
                                 "--batch-size", "1", *COMMON[:-2]])
    test = ["--mode", "test", *data, "--label-root", tree["label_root"], "--log-tb-dir", str(tmp_path / "exp"), *COMMON]
    scores = main_script.main([*test, "--restore-from", str(tmp_path / "pl"), "--experiment-name", "maps"])
    confusion = 0
    for label_path in glob.glob(os.path.join(tree["label_root"], "val", "*", "*.png")):
        label = read_label(label_path)
        city, stem = label_path.split(os.sep)[-2], os.path.basename(label_path).split("_gtFine")[0]
        pseudo = read_label(str(tmp_path / "pl" / "label_ids" / "val" / city / f"{stem}_gtFine_labelIds.png"))
        pseudo = cv2.resize(pseudo, label.shape[::-1], interpolation=cv2.INTER_NEAREST)  # written at the input size
        confusion = confusion + image_confusion(pseudo, label, 19)
    assert scores["miou"] == pytest.approx(scores_from_confusion(confusion)["miou"])
