"""Label preparation (stage 1): exact equality with the official Cityscapes table, mirror tree,
resumable runs, atomic writes and one-line errors."""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from cityscapesscripts.helpers.labels import id2label, name2label

from utils.cli import UserError
from utils.labels import SYNTHIA_TO_TRAIN_ID
from utils.transfer_trainid import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_IDS = np.arange(34, dtype=np.uint8)  # every Cityscapes label id; the license plate's -1 is never drawn


def _official_train_id(label_id):
    train_id = id2label[label_id].trainId
    return train_id if 0 <= train_id < 255 else 255


def _write(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), array)


def _gtfine(root):
    """All label ids 0..33 in every file, plus the gtFine files that must not be copied."""
    ids = np.tile(ALL_IDS, (4, 2))
    files = ["train/aachen/aachen_000000_000019", "train/bochum/bochum_000001_000019",
             "val/frankfurt/frankfurt_000000_000294"]
    for rel in files:
        _write(f"{root}/{rel}_gtFine_labelIds.png", np.roll(ids, len(rel), axis=1))
        _write(f"{root}/{rel}_gtFine_color.png", np.zeros((4, 8, 3), np.uint8))
        _write(f"{root}/{rel}_gtFine_instanceIds.png", np.zeros((4, 8), np.uint16))
        open(f"{root}/{rel}_gtFine_polygons.json", "w").write("{}")
    return files


def _all_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


@pytest.mark.parametrize("workers", [1, 2])
def test_cityscapes_conversion_equals_official_table_and_mirrors_tree(tmp_path, workers, capsys):
    files = _gtfine(tmp_path / "gtFine")
    assert main(["--ori-label-root", str(tmp_path / "gtFine"), "--dst-label-root", str(tmp_path / "gtFine2"),
                 "--workers", str(workers)]) == 0
    assert _all_files(tmp_path / "gtFine2") == sorted(f + "_gtFine_labelIds.png" for f in files)
    for rel in files:
        src = cv2.imread(str(tmp_path / "gtFine" / f"{rel}_gtFine_labelIds.png"), cv2.IMREAD_UNCHANGED)
        dst = cv2.imread(str(tmp_path / "gtFine2" / f"{rel}_gtFine_labelIds.png"), cv2.IMREAD_UNCHANGED)
        assert dst.dtype == np.uint8 and dst.shape == src.shape
        for label_id in range(34):
            assert (dst[src == label_id] == _official_train_id(label_id)).all(), label_id
    assert "converted 3, skipped 0, total 3 -> " in capsys.readouterr().out


def test_table_details():
    # The license plate's id -1 cannot be stored in a uint8 label image; its train id is ignored anyway.
    assert name2label["license plate"].id == -1 and name2label["license plate"].trainId in (-1, 255)
    assert [_official_train_id(i) for i in (0, 7, 8, 11, 26, 33)] == [255, 0, 1, 2, 13, 18]


def test_skip_overwrite_and_no_temp_files(tmp_path, capsys):
    _gtfine(tmp_path / "gtFine")
    args = ["--ori-label-root", str(tmp_path / "gtFine"), "--dst-label-root", str(tmp_path / "out"), "--workers", "1"]
    main(args)
    marker = tmp_path / "out" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"
    _write(marker, np.full((1, 1), 7, np.uint8))
    capsys.readouterr()
    main(args)
    assert "converted 0, skipped 3" in capsys.readouterr().out
    assert cv2.imread(str(marker), cv2.IMREAD_UNCHANGED).shape == (1, 1)
    main(args + ["--overwrite"])
    assert "converted 3, skipped 0" in capsys.readouterr().out
    assert cv2.imread(str(marker), cv2.IMREAD_UNCHANGED).shape == (4, 68)
    assert not [f for f in _all_files(tmp_path / "out") if os.path.basename(f).startswith(".tmp")]


def test_gta5_and_synthia(tmp_path, capsys):
    _write(tmp_path / "gta" / "00001.png", ALL_IDS[None, :])
    main(["--dataset", "gta5", "--ori-label-root", str(tmp_path / "gta"), "--dst-label-root", str(tmp_path / "gta2")])
    out = cv2.imread(str(tmp_path / "gta2" / "00001.png"), cv2.IMREAD_UNCHANGED)
    assert out.tolist()[0] == [_official_train_id(i) for i in range(34)]

    ids = np.arange(23, dtype=np.uint16)[None, :]
    bgr = np.stack([np.full_like(ids, 500), np.full_like(ids, 3), ids], axis=-1)  # class id in red
    _write(tmp_path / "syn" / "0000001.png", bgr)
    main(["--dataset", "synthia", "--ori-label-root", str(tmp_path / "syn"), "--dst-label-root", str(tmp_path / "syn2")])
    out = cv2.imread(str(tmp_path / "syn2" / "0000001.png"), cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint8 and out.tolist()[0] == [SYNTHIA_TO_TRAIN_ID.get(i, 255) for i in range(23)]


def test_errors(tmp_path):
    with pytest.raises(UserError, match="--ori-label-root: folder not found: .*missing"):
        main(["--ori-label-root", str(tmp_path / "missing")])
    (tmp_path / "empty" / "train").mkdir(parents=True)
    _write(tmp_path / "empty" / "train" / "x_gtFine_color.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(UserError, match=r"no label files matching \*_gtFine_labelIds\.png under .*empty"):
        main(["--ori-label-root", str(tmp_path / "empty"), "--dst-label-root", str(tmp_path / "o")])
    with pytest.raises(UserError, match="must differ"):
        main(["--ori-label-root", str(tmp_path / "empty"), "--dst-label-root", str(tmp_path / "empty")])
    _gtfine(tmp_path / "gt")
    bad = tmp_path / "gt" / "val" / "frankfurt" / "frankfurt_000000_000294_gtFine_labelIds.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"cannot read label.*frankfurt_000000_000294_gtFine_labelIds\.png"):
        main(["--ori-label-root", str(tmp_path / "gt"), "--dst-label-root", str(tmp_path / "o"), "--workers", "2"])
    with pytest.raises(UserError, match="--dst-label-root is empty"):  # an unset variable: not the current folder
        main(["--ori-label-root", str(tmp_path / "gt"), "--dst-label-root", ""])


def test_a_folder_it_cannot_read_is_named_not_skipped(tmp_path, monkeypatch):
    _gtfine(tmp_path / "gt")
    hidden, scandir = str(tmp_path / "gt" / "val"), os.scandir

    def refusing(path="."):  # what a folder without read permission gives (root reads every folder)
        if os.fspath(path) == hidden:
            raise PermissionError(13, "Permission denied", hidden)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    with pytest.raises(UserError, match=f"--ori-label-root: cannot read {hidden} \\(Permission denied\\)"):
        main(["--ori-label-root", str(tmp_path / "gt"), "--dst-label-root", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_command_line_as_file_and_as_module(tmp_path):
    result = subprocess.run([sys.executable, "utils/transfer_trainid.py", "--ori-label-root", str(tmp_path / "no")],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: --ori-label-root: folder not found: {tmp_path / 'no'}"]
    _gtfine(tmp_path / "gtFine")
    result = subprocess.run([sys.executable, "-m", "utils.transfer_trainid", "--ori-label-root", str(tmp_path / "gtFine"),
                             "--dst-label-root", str(tmp_path / "gtFine2")], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"converted 3, skipped 0, total 3 -> {tmp_path / 'gtFine2'}" in result.stdout
