"""A catalogue of hostile inputs, each given to an entry point's real ``main`` through ``utils.cli.run``.

Every case must end the same way: exit code 2, exactly one line on stderr that starts with
``error:`` and names the flag or the file at fault, no traceback, and nothing written under the
output folder the command was given. The catalogue:

1. Unfinished inputs. A data stage's output folder whose run was stopped part-way (its state is
   there, its summary not: ``modules/stage_output.py``) is refused by every stage that reads it,
   naming the command that finishes it; rerunning that command makes it acceptable. A folder made
   by hand (neither state nor summary) is accepted as it is.
2. Inputs of the wrong kind. Train-id labels given to the label-id conversion (255 is no label id);
   an image list or list folder that the user typed but that does not exist (the default list
   folder may be absent: the image folders are scanned then).
3. Numeric flags out of range, NaN or infinite, refused when parsed by the types of
   ``utils/cli.py``, in every entry point; and a refusal that can only come once the data is
   known (a batch larger than the training set) before any TensorBoard log or experiment folder.
4. What a hostile review found: values that parse but cannot work (a rate of 1e300, a 30000-pixel
   side, more hard patches per batch than exist), symbolic links planted in output folders (a lock
   file, an output folder of --overwrite, a link to unfinished pseudo-labels), damaged state
   (round.json, resume checkpoints missing their training state), train ids without ignored pixels
   given as label ids, and an older checkpoint whose hyper-parameters are a Namespace (it resumes).
"""
import json
import os
import shutil
import signal

import cv2
import numpy as np
import pytest
import torch

import construct_hard_patch
import demo
import extract_model_state_dict
import generate_pseudo_labels
import main as main_script
from tests.fixtures import assert_one_line_refusal, make_cityscapes, make_patches, make_pseudo_labels, run_refused
from tools import benchmark, synthetic
from utils import transfer_trainid
from utils.cli import run

ENTRY_POINTS = {
    "main.py": main_script.main,
    "generate_pseudo_labels.py": generate_pseudo_labels.main,
    "construct_hard_patch.py": construct_hard_patch.main,
    "demo.py": demo.main,
    "tools.benchmark": benchmark.main,
    "tools.synthetic": synthetic.main,
    "utils/transfer_trainid.py": transfer_trainid.main,
    "extract_model_state_dict.py": extract_model_state_dict.main,
}


# -- tiny worlds ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from models.deeplabv2 import get_deeplabv2

    root = tmp_path_factory.mktemp("hostile")
    paths = make_cityscapes(str(root / "cs"), train=6, val=2, size=(64, 32))
    paths["data"] = str(root / "cs")
    paths["lists"] = str(root / "lists")  # an existing list folder without lists: scanned
    os.makedirs(paths["lists"])
    paths["pseudo"] = make_pseudo_labels(str(root / "pseudo"), paths["label_root"])  # hand-made
    paths["weights"] = str(root / "w.pth")
    torch.manual_seed(0)
    torch.save(get_deeplabv2(arch="deeplabv2_tiny").state_dict(), paths["weights"])
    paths["root"] = str(root)
    return paths


def refused(capsys, entry, argv):
    """Run ``entry`` as the shell would; returns its exit code and stderr."""
    return run_refused(capsys, ENTRY_POINTS[entry], argv)


def main_args(world, out):
    return ["--image-root", world["image_root"], "--label-root", world["label_root"], "--list-root", world["lists"],
            "--arch", "deeplabv2_tiny", "--input-size", "64x32", "--num-workers", "0", "--accelerator", "cpu",
            "--devices", "1", "--log-tb-dir", out, "--max-steps", "2", "--val-interval", "2"]


def data_stage_args(world, save):
    return ["--data-dir", world["data"], "--save", save, "--arch", "deeplabv2_tiny", "--input-size", "64x32",
            "--num-workers", "0", "--accelerator", "cpu", "--devices", "1"]


# -- 3. numeric flags: every entry point, many values -----------------------------------------------------

SMHM = ["--module-name", "smhm", "--restore-from", "WEIGHTS"]
SPATIAL_MIX = ["--module-name", "spatial_mix", "--restore-from", "WEIGHTS"]

MAIN_FLAGS = [
    *[(["--lr", v], "--lr") for v in ("-1", "0", "nan", "inf", "1e400", "fast")],
    *[(["--module-name", "smhm", "--lr", v], "--lr") for v in ("0", "-1e-5", "NaN")],
    *[([*SMHM, "--rounds", v], "--rounds") for v in ("0", "-2", "1.5", "three")],
    *[(["--max-steps", v], "--max-steps") for v in ("0", "-5", "1e3")],
    (["--max-epochs", "0"], "--max-epochs"),
    *[(["--seed", v], "--seed") for v in ("-1", str(2 ** 32), "nan")],
    *[(["--val-interval", v], "--val-interval") for v in ("0", "-1", "1.5", "nan", ".5e400", "0.0")],
    *[(["--num-classes", v], "--num-classes") for v in ("0", "-19", "256")],
    (["--train-batch-size", "0"], "--train-batch-size"),
    (["--num-workers", "-1"], "--num-workers"),
    (["--log-interval", "0"], "--log-interval"),
    *[(["--devices", v], "--devices") for v in ("0", "-2", "x,y", "1.5")],
    (["--num-nodes", "0"], "--num-nodes"),
    *[([*SPATIAL_MIX, "--ema-alpha", v], "--ema-alpha") for v in ("-0.1", "1.5", "nan", "inf")],
    *[([*SPATIAL_MIX, "--flip-prob", v], "--flip-prob") for v in ("-1", "2", "nan")],
    *[([*SPATIAL_MIX, "--position-beta", v], "--position-beta") for v in ("nan", "inf", "-inf")],
    *[([*SPATIAL_MIX, "--confidence-threshold", v], "--confidence-threshold") for v in ("nan", "inf", "1.5", "-0.1")],
    ([*SPATIAL_MIX, "--confidence-source", "logits", "--confidence-threshold", "nan"], "--confidence-threshold"),
    *[([*SMHM, "--hard-patch-weight", v], "--hard-patch-weight") for v in ("-1", "nan", "inf")],
    *[([*SMHM, "--hard-patch-batch-size", v], "--hard-patch-batch-size") for v in ("0", "-3", "2.5")],
    (["--module-name"], "--module-name"),
]


@pytest.mark.parametrize("case, flag", MAIN_FLAGS, ids=[" ".join(c) for c, _ in MAIN_FLAGS])
def test_main_numeric_flag(world, tmp_path, capsys, case, flag):
    out = str(tmp_path / "out")
    case = [world["weights"] if a == "WEIGHTS" else a for a in case]
    code, err = refused(capsys, "main.py", [*main_args(world, out), *case])
    assert_one_line_refusal(code, err, flag, out)


DATA_STAGE_FLAGS = [
    *[(["--multiscale", "--scales", v], "--scales") for v in ("0", "-1", "nan", "inf", "", "1,,x", "0.5,0")],
    (["--scales", "nan"], "--scales"),  # also without --multiscale: a bad value is a bad value
    *[(["--batch-size", v], "--batch-size") for v in ("0", "-1")],
    (["--num-workers", "-2"], "--num-workers"),
    (["--num-nodes", "0"], "--num-nodes"),
    *[(["--devices", v], "--devices") for v in ("0", "-2")],
    (["--num-classes", "0"], "--num-classes"),
]


@pytest.mark.parametrize("entry", ["generate_pseudo_labels.py", "construct_hard_patch.py"])
@pytest.mark.parametrize("case, flag", DATA_STAGE_FLAGS, ids=[" ".join(c) for c, _ in DATA_STAGE_FLAGS])
def test_data_stage_numeric_flag(world, tmp_path, capsys, entry, case, flag):
    save = str(tmp_path / "out")
    source = ["--restore-from", world["weights"]]
    code, err = refused(capsys, entry, [*data_stage_args(world, save), *source, *case])
    assert_one_line_refusal(code, err, flag, save)


OTHER_FLAGS = [
    ("construct_hard_patch.py", ["--rare-classes", "auto", "--num-rare", "0"], "--num-rare"),
    ("construct_hard_patch.py", ["--num-rare", "-1"], "--num-rare"),
    ("demo.py", ["--rounds", "0"], "--rounds"),
    ("demo.py", ["--rounds", "-1"], "--rounds"),
    ("demo.py", ["--seed", "-3"], "--seed"),
    ("demo.py", ["--num-workers", "-1"], "--num-workers"),
    ("tools.benchmark", ["--steps", "0"], "--steps"),
    ("tools.benchmark", ["--warmup", "-1"], "--warmup"),
    ("tools.benchmark", ["--threads", "0"], "--threads"),
    ("tools.benchmark", ["--batch-size", "0"], "--batch-size"),
    ("tools.benchmark", ["--num-workers", "-1"], "--num-workers"),
    ("tools.synthetic", ["--domain-gap", "nan"], "--domain-gap"),
    ("tools.synthetic", ["--domain-gap", "1.5"], "--domain-gap"),
    ("tools.synthetic", ["--num-train", "0"], "--num-train"),
    ("tools.synthetic", ["--seed", "-1"], "--seed"),
    ("tools.synthetic", ["--workers", "-1"], "--workers"),
    ("utils/transfer_trainid.py", ["--workers", "0"], "--workers"),
    ("utils/transfer_trainid.py", ["--dataset", "kitti"], "--dataset"),
    ("extract_model_state_dict.py", ["--model-weight-keyname", "teacher"], "--model-weight-keyname"),
    ("extract_model_state_dict.py", [], "--pl-weight-path"),
]


@pytest.mark.parametrize("entry, case, flag", OTHER_FLAGS, ids=[f"{e} {' '.join(c)}" for e, c, _ in OTHER_FLAGS])
def test_other_entry_point_flag(world, tmp_path, capsys, entry, case, flag):
    out = str(tmp_path / "out")
    where = {"construct_hard_patch.py": [*data_stage_args(world, out), "--pseudo-label-root", world["pseudo"]],
             "demo.py": ["--out", out, "--quick"],
             "tools.benchmark": ["--accelerator", "cpu", "--json", os.path.join(out, "b.json")],
             "tools.synthetic": ["--root", out],
             "utils/transfer_trainid.py": ["--ori-label-root", world["label_id_root"], "--dst-label-root", out],
             "extract_model_state_dict.py": ["--save-path", os.path.join(out, "x.pth")]}[entry]
    if flag != "--pl-weight-path" and entry == "extract_model_state_dict.py":
        where += ["--pl-weight-path", world["weights"]]
    code, err = refused(capsys, entry, [*where, *case])
    assert_one_line_refusal(code, err, flag, out)


def test_a_batch_larger_than_the_training_set_leaves_no_log(world, tmp_path, capsys):
    """Refused once the data is known (6 training images, batches of 8), still before the
    TensorBoard logger or the checkpoints write anything."""
    out = str(tmp_path / "out")
    code, err = refused(capsys, "main.py", [*main_args(world, out), "--train-batch-size", "8"])
    assert_one_line_refusal(code, err, "--train-batch-size 8", out)


# -- 2. inputs of the wrong kind ------------------------------------------------------------------------

def _label_ids(root, dataset, name, values):
    """A label file of ``dataset`` holding ``values`` (one row)."""
    ids = np.array([values], np.uint16 if dataset == "synthia" else np.uint8)
    if dataset == "synthia":  # 16-bit, the class id in the red channel
        ids = np.stack([np.zeros_like(ids), np.zeros_like(ids), ids], axis=-1)
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, ids)
    return path


WRONG_KIND = [
    ("cityscapes", "train/aachen/a_000000_000019_gtFine_labelIds.png", [0, 7, 18, 255], "value 255"),  # train ids
    ("cityscapes", "train/aachen/a_000000_000019_gtFine_labelIds.png", [0, 1, 2, 19], None),  # train ids, no 255
    ("cityscapes", "val/bochum/b_000000_000019_gtFine_labelIds.png", [7, 8, 34], "value 34"),
    ("gta5", "00001.png", [7, 26, 255], "value 255"),
    ("synthia", "0000001.png", [3, 4, 255], "value 255"),
    ("synthia", "0000001.png", [3, 4, 23], "value 23"),
]


@pytest.mark.parametrize("dataset, name, values, expected", WRONG_KIND)
def test_label_ids_that_are_not_label_ids(tmp_path, capsys, dataset, name, values, expected):
    src, out = str(tmp_path / "ids"), str(tmp_path / "out")
    path = _label_ids(src, dataset, name, values)
    code, err = refused(capsys, "utils/transfer_trainid.py",
                        ["--dataset", dataset, "--ori-label-root", src, "--dst-label-root", out, "--workers", "1"])
    if expected is None:  # 0..18 are label ids too: a train-id file without an ignored pixel cannot be told
        assert code == 0
        return
    assert_one_line_refusal(code, err, path, out)
    assert expected in err and f"not a {dataset} label id" in err


def test_a_train_id_folder_among_label_ids_is_refused_before_anything_is_written(tmp_path, capsys):
    """The first file is checked before the conversion starts (on many processes)."""
    src, out = str(tmp_path / "ids"), str(tmp_path / "out")
    for k in range(5):
        _label_ids(src, "cityscapes", f"train/aachen/a_{k:06d}_000019_gtFine_labelIds.png", [0, 13, 255])
    code, err = refused(capsys, "utils/transfer_trainid.py",
                        ["--ori-label-root", src, "--dst-label-root", out, "--workers", "2"])
    assert_one_line_refusal(code, err, "a_000000_000019_gtFine_labelIds.png", out)


def test_the_label_tables_ranges():
    from utils.labels import MAX_LABEL_ID

    assert MAX_LABEL_ID == {"cityscapes": 33, "gta5": 33, "synthia": 22}


@pytest.mark.parametrize("entry", ["main.py", "main.py --mode test"])
def test_a_typed_list_root_that_does_not_exist(world, tmp_path, capsys, entry):
    out = str(tmp_path / "out")
    argv = main_args(world, out)
    argv[argv.index("--list-root") + 1] = str(tmp_path / "lsits")
    extra = ["--mode", "test", "--restore-from", world["weights"]] if "test" in entry else []
    code, err = refused(capsys, "main.py", [*argv, *extra])
    assert_one_line_refusal(code, err, "--list-root", out)
    assert str(tmp_path / "lsits") in err


def test_the_default_list_root_may_be_absent_and_a_typed_one_is_kept():
    from main import parse_args
    from datasets.cityscapes import DEFAULT_LIST_ROOT

    assert parse_args([]).data.lists == DEFAULT_LIST_ROOT == "./datasets/list/cityscapes"
    assert parse_args([]).data.list_root is None  # untyped: a saved configuration keeps it so
    assert parse_args(["--list-root", "."]).data.lists == "."


@pytest.mark.parametrize("entry", ["generate_pseudo_labels.py", "construct_hard_patch.py"])
@pytest.mark.parametrize("name", ["missing/train.txt", "train.txt"])
def test_a_typed_data_list_that_does_not_exist(world, tmp_path, capsys, entry, name):
    save = str(tmp_path / "out")
    data_list = str(tmp_path / name)
    code, err = refused(capsys, entry, [*data_stage_args(world, save), "--restore-from", world["weights"],
                                        "--data-list", data_list])
    assert_one_line_refusal(code, err, "--data-list", save)
    assert data_list in err


# -- 1. unfinished inputs -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stopped(world, tmp_path_factory):
    """Data-stage folders of runs stopped part-way, made by the real commands (Ctrl-C):

    - ``labels_third``: pseudo-labelling stopped after 2 of 6 images;
    - ``labels_no_report``: every pseudo-label written, stopped before the report (summary.json);
    - ``patches_third``: mining stopped after 2 of 6 images;
    - ``patches_labelling``: mining with ``--restore-from``, stopped while computing its labels.
    """
    import modules.hard_patches as hard_patches
    import modules.pseudo_labels as pseudo_labels
    from modules.prediction import PredictionModule

    root = tmp_path_factory.mktemp("stopped")
    paths = {key: str(root / key) for key in ("labels_third", "labels_no_report", "patches_third",
                                              "patches_labelling")}
    label_argv = [*data_stage_args(world, paths["labels_third"]), "--restore-from", world["weights"],
                  "--batch-size", "1"]
    mp = pytest.MonkeyPatch()

    def run_stopped(entry, argv):
        handler = signal.getsignal(signal.SIGINT)
        try:
            with pytest.raises(SystemExit) as exit_info:
                run(ENTRY_POINTS[entry], [str(a) for a in argv])
        finally:
            signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C once it has one
        assert exit_info.value.code == 130

    predict_step = PredictionModule.predict_step

    def stop_at_third_batch(self, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 2:
            raise KeyboardInterrupt
        return predict_step(self, batch, batch_idx, dataloader_idx)

    try:
        mp.setattr(PredictionModule, "predict_step", stop_at_third_batch)
        run_stopped("generate_pseudo_labels.py", label_argv)
        label_argv[label_argv.index("--save") + 1] = paths["patches_labelling"]
        run_stopped("construct_hard_patch.py", [*label_argv, "--rare-classes", "6,7"])
        mp.undo()

        def no_report(*args, **kwargs):
            raise KeyboardInterrupt

        mp.setattr(pseudo_labels, "write_report", no_report)
        label_argv[label_argv.index("--save") + 1] = paths["labels_no_report"]
        run_stopped("generate_pseudo_labels.py", label_argv)
        mp.undo()

        select = hard_patches.select_patches
        calls = []

        def stop_at_third_image(label, boxes, rare):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return select(label, boxes, rare)

        mp.setattr(hard_patches, "select_patches", stop_at_third_image)
        run_stopped("construct_hard_patch.py", [*data_stage_args(world, paths["patches_third"]),
                                                "--pseudo-label-root", world["pseudo"], "--rare-classes", "0,2"])
    finally:
        mp.undo()
    paths["label_argv"] = label_argv
    return paths


def test_the_stopped_runs_are_what_they_claim(stopped):
    labels = os.path.join(stopped["labels_third"], "label_ids", "train", "aachen")
    assert len(os.listdir(labels)) == 2 and not os.path.exists(os.path.join(stopped["labels_third"], "summary.json"))
    labels = os.path.join(stopped["labels_no_report"], "label_ids", "train", "aachen")
    assert len(os.listdir(labels)) == 6 and not os.path.exists(os.path.join(stopped["labels_no_report"], "summary.json"))
    mined = open(os.path.join(stopped["patches_third"], ".state", "mined.tsv")).read().splitlines()
    assert len(mined) == 2 and os.listdir(os.path.join(stopped["patches_third"], "patches"))
    assert not os.path.exists(os.path.join(stopped["patches_third"], "summary.json"))
    assert os.path.isdir(os.path.join(stopped["patches_labelling"], ".pseudo_labels"))
    assert not os.path.exists(os.path.join(stopped["patches_labelling"], "patches"))


PSEUDO_ROOTS = [("labels_third", ""), ("labels_no_report", ""), ("labels_no_report", "label_ids"),
                ("labels_no_report", "label_ids/train")]


@pytest.mark.parametrize("folder, below", PSEUDO_ROOTS)
def test_baseline_refuses_unfinished_pseudo_labels(world, stopped, tmp_path, capsys, folder, below):
    out = str(tmp_path / "out")
    root = os.path.join(stopped[folder], below)
    code, err = refused(capsys, "main.py", [*main_args(world, out), "--module-name", "baseline",
                                            "--pseudo-label-root", root])
    assert_one_line_refusal(code, err, f"--pseudo-label-root {root} is unfinished", out)
    assert "generate_pseudo_labels.py" in err and f"--save {stopped[folder]}" in err


@pytest.mark.parametrize("folder, below", PSEUDO_ROOTS)
def test_mining_refuses_unfinished_pseudo_labels(world, stopped, tmp_path, capsys, folder, below):
    save = str(tmp_path / "out")
    root = os.path.join(stopped[folder], below)
    code, err = refused(capsys, "construct_hard_patch.py", [*data_stage_args(world, save), "--pseudo-label-root", root])
    assert_one_line_refusal(code, err, f"--pseudo-label-root {root} is unfinished", save)
    assert "generate_pseudo_labels.py" in err


@pytest.mark.parametrize("folder", ["patches_third", "patches_labelling"])
def test_smhm_refuses_unfinished_hard_patches(world, stopped, tmp_path, capsys, folder):
    out = str(tmp_path / "out")
    code, err = refused(capsys, "main.py", [*main_args(world, out), *SMHM[:3], world["weights"],
                                            "--train-batch-size", "2", "--hard-patches-root", stopped[folder]])
    assert_one_line_refusal(code, err, f"--hard-patches-root {stopped[folder]} is unfinished", out)
    assert "construct_hard_patch.py" in err


def _train_data(world, *flags):
    """The training datasets of a stage, built as a run builds them before training."""
    from main import parse_args
    from modules import MODULES
    from modules.data import SegmentationDataModule

    args = parse_args([*main_args(world, "unused"), *flags])
    module = MODULES[args.module_name]
    data = SegmentationDataModule(args, module.train_source, use_patches=module.use_patches)
    data.check("fit")
    return data


def test_rerunning_the_named_command_finishes_the_inputs(world, stopped, tmp_path, capsys):
    labels = str(tmp_path / "labels")
    shutil.copytree(stopped["labels_third"], labels)
    argv = list(stopped["label_argv"])
    argv[argv.index("--save") + 1] = labels
    assert refused(capsys, "generate_pseudo_labels.py", argv)[0] == 0
    assert len(_train_data(world, "--module-name", "baseline", "--pseudo-label-root", labels)._datasets["train"]) == 6

    patches = str(tmp_path / "patches")
    shutil.copytree(stopped["patches_third"], patches)
    assert refused(capsys, "construct_hard_patch.py", [*data_stage_args(world, patches), "--pseudo-label-root",
                                                       world["pseudo"], "--rare-classes", "0,2"])[0] == 0
    assert json.load(open(os.path.join(patches, "summary.json")))["images"] == 6
    data = _train_data(world, *SMHM[:3], world["weights"], "--hard-patches-root", patches)
    assert len(data._datasets["patches"]) == len(os.listdir(os.path.join(patches, "patches"))) > 0


def test_hand_made_folders_are_accepted(world, tmp_path):
    """Neither state nor summary: made by hand or another tool, taken as it is."""
    patches = make_patches(str(tmp_path / "patches"))
    data = _train_data(world, *SMHM[:3], world["weights"], "--hard-patches-root", patches)
    assert len(data._datasets["patches"]) == 5
    data = _train_data(world, "--module-name", "baseline", "--pseudo-label-root", world["pseudo"])
    assert len(data._datasets["train"]) == 6


# -- 4. found by a hostile review: links, damaged state files, values that parse but cannot work -------------

@pytest.mark.parametrize("flags, names", [
    (["--lr", "1e300"], "--lr"),
    (["--lr", "2"], "--lr"),
    (["--input-size", "30000x30000"], "--input-size"),
    ([*SMHM, "--hard-patch-batch-size", "100000"], "--hard-patch-batch-size 100000 is more than the 5 hard patches"),
])
def test_values_that_parse_but_cannot_work(world, tmp_path, capsys, flags, names):
    patches = make_patches(str(tmp_path / "patches"))
    out = str(tmp_path / "out")
    argv = [f.replace("WEIGHTS", world["weights"]) for f in flags] + ["--hard-patches-root", patches] * ("smhm" in flags)
    code, err = refused(capsys, "main.py", [*main_args(world, out), *argv])
    assert_one_line_refusal(code, err, names, out)


def test_an_image_cache_that_is_a_file(world, tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.write_text("a file")
    out = str(tmp_path / "out")
    code, err = refused(capsys, "main.py", [*main_args(world, out), "--image-cache", cache])
    assert_one_line_refusal(code, err, "--image-cache", out)


def test_train_ids_without_ignored_pixels_are_not_label_ids(world, tmp_path, capsys):
    train_ids = tmp_path / "train_ids"
    for k in range(3):  # road, sidewalk, building, vegetation, sky ... as train ids (0..10), no 255
        path = train_ids / "train" / "aachen" / f"aachen_{k:06d}_000019_gtFine_labelIds.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.random.default_rng(k).integers(0, 11, (16, 32), dtype=np.uint8))
    out = str(tmp_path / "out")
    code, err = refused(capsys, "utils/transfer_trainid.py", ["--ori-label-root", train_ids, "--dst-label-root", out])
    assert_one_line_refusal(code, err, "converted already", out)
    # Real label ids (sky 23, vegetation 21, cars 26) still convert.
    assert transfer_trainid.main(["--ori-label-root", world["label_id_root"], "--dst-label-root", out]) == 0


def test_a_link_to_unfinished_pseudo_labels_is_still_unfinished(world, tmp_path, capsys):
    save = tmp_path / "pl"
    shutil.copytree(world["pseudo"], save)
    (save / ".state" / "train").mkdir(parents=True)
    (save / ".state" / "train" / "settings.json").write_text("{}")  # started, no summary: unfinished
    link = tmp_path / "link"
    os.symlink(save / "label_ids", link)
    out = str(tmp_path / "out")
    code, err = refused(capsys, "main.py", [*main_args(world, out), "--module-name", "baseline", "--restore-from",
                                            world["weights"], "--pseudo-label-root", link])
    assert_one_line_refusal(code, err, "is unfinished", out)


def test_overwrite_never_deletes_through_a_link(world, tmp_path, capsys):
    victim = tmp_path / "victim"
    (victim / "train").mkdir(parents=True)
    (victim / "train" / "keep.txt").write_text("precious")
    save = tmp_path / "save"
    save.mkdir()
    os.symlink(victim, save / "label_ids")
    code, err = refused(capsys, "generate_pseudo_labels.py",
                        [*data_stage_args(world, save), "--restore-from", world["weights"], "--overwrite"])
    assert code == 2 and err.count("\n") == 1 and "symbolic link" in err, err
    assert (victim / "train" / "keep.txt").read_text() == "precious" and sorted(os.listdir(victim)) == ["train"]


def test_a_planted_lock_link_is_refused_and_its_target_untouched(world, tmp_path, capsys):
    precious = tmp_path / "precious.txt"
    precious.write_text("precious content")
    folder = tmp_path / "out" / "basic" / "shared"
    folder.mkdir(parents=True)
    os.symlink(precious, folder / ".run.lock")
    code, err = refused(capsys, "main.py", [*main_args(world, str(tmp_path / "out")), "--experiment-name", "shared"])
    assert code == 2 and err.count("\n") == 1 and "symbolic link" in err, err
    assert precious.read_text() == "precious content"


def test_a_damaged_round_marker_is_one_line(world, tmp_path, capsys):
    out = str(tmp_path / "out")
    folder = tmp_path / "out" / "basic" / "r_round_1"
    folder.mkdir(parents=True)
    for content in ('{"student": 5}', "not json", "[]"):
        (folder / "round.json").write_text(content)
        code, err = refused(capsys, "main.py", [*main_args(world, out), "--experiment-name", "r", "--rounds", "2",
                                                "--restore-from", world["weights"]])
        assert code == 2 and err.count("\n") == 1 and "round.json is damaged" in err, err


def test_a_folder_given_as_weights(world, tmp_path, capsys):
    out = str(tmp_path / "out")
    code, err = refused(capsys, "main.py", [*main_args(world, out), "--restore-from", tmp_path])
    assert_one_line_refusal(code, err, "is a folder, not a file", out)


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    """A real ``last.ckpt`` of a finished 2-step run."""
    out = str(tmp_path_factory.mktemp("trained"))
    main_script.main([*main_args(world, out), "--experiment-name", "done", "--visualize-interval", "0"])
    return os.path.join(out, "basic", "done", "last.ckpt")


@pytest.mark.parametrize("damage, names", [
    (lambda c: c.pop("lr_schedulers"), "learning-rate schedule"),
    (lambda c: c.update(loops={}), "loops.fit_loop"),
    (lambda c: c.update(optimizer_states=[]), "optimizer_states"),
])
def test_a_damaged_resume_checkpoint_is_one_line(world, trained, tmp_path, capsys, damage, names):
    checkpoint = torch.load(trained, map_location="cpu", weights_only=True)
    damage(checkpoint)
    path = tmp_path / "damaged.ckpt"
    torch.save(checkpoint, path)
    out = str(tmp_path / "out")
    code, err = refused(capsys, "main.py", [*main_args(world, out), "--resume", path, "--max-steps", "4"])
    assert_one_line_refusal(code, err, names, out)


def test_an_older_checkpoint_with_namespace_hyper_parameters_resumes(world, trained, tmp_path):
    # Older Lightning checkpoints keep their hyper-parameters as a Namespace; the checker and
    # Lightning's own reader both read it as data (the README's promise), so the run continues.
    import argparse

    checkpoint = torch.load(trained, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"] = argparse.Namespace(**checkpoint["hyper_parameters"])
    path = tmp_path / "older.ckpt"
    torch.save(checkpoint, path)
    result = main_script.main([*main_args(world, str(tmp_path / "out")), "--resume", str(path), "--max-steps", "4",
                               "--visualize-interval", "0"])
    assert torch.load(result["last_checkpoint"], map_location="cpu", weights_only=True)["global_step"] == 4
