"""``main.py --mode predict``: predictions for your own images (no labels), at each image's own size,
resumable, one line per mistake; and the pictures' titles and legend (``utils/visualize.py``)."""
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import main as main_script
from datasets.base import TargetDataset
from datasets.targets import make_target
from models.deeplabv2 import get_deeplabv2
from tests.fixtures import _scene, _write, assert_one_line_refusal, make_acdc, run_refused, tiny_weights
from utils.labels import PALETTE, colorize
from utils.visualize import label_panel, labelled_picture

COMMON = ["--arch", "deeplabv2_tiny", "--input-size", "64x32", "--num-workers", "0", "--accelerator", "cpu",
          "--devices", "1", "--test-batch-size", "1"]
SIZES = {"street/0001.jpg": (80, 40), "park/deep/0002.png": (50, 70)}  # (width, height): two sizes, one portrait


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(str(tmp_path_factory.mktemp("weights") / "w.pth"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("mine") / "images"
    rng = np.random.default_rng(0)
    for rel, size in SIZES.items():
        _write(str(root / rel), _scene(rng, *size)[1])
    return str(root)


def predict_argv(images, weights, out, *extra):
    return ["--mode", "predict", "--restore-from", weights, "--target-dataset", "folder", "--data-dir", images,
            "--save-predictions", out, "--log-tb-dir", os.path.join(os.path.dirname(out), "runs"), *COMMON, *extra]


def expected_predictions(images, weights, flip=False, scales=None):
    """The argmax of the logits upsampled (bilinear) to each image's original size, computed here;
    with ``scales``, the mean of the logits of the rescaled inputs, each at the input size."""
    net = get_deeplabv2(arch="deeplabv2_tiny", restore_from=weights).eval()
    dataset = TargetDataset(make_target("folder", images), "val", input_size=(64, 32))
    expected = {}

    def forward(image, size=None):
        logits = net(image, size=size)
        return logits + net(image.flip(-1), size=size).flip(-1) if flip else logits

    with torch.no_grad():
        for item, rel in zip(dataset, dataset.images):
            image = item["image"][None]
            if scales:
                logits = sum(forward(F.interpolate(image, size=(round(32 * s), round(64 * s)), mode="bilinear",
                                                   align_corners=False), size=(32, 64)) for s in scales) / len(scales)
            else:
                logits = forward(image)
            width, height = SIZES[rel]
            full = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=True)
            expected[item["name"]] = full.argmax(1)[0].numpy().astype(np.uint8)
    return expected


def test_predict_writes_every_image_at_its_own_size_and_resumes(images, weights, tmp_path):
    out = str(tmp_path / "predictions")
    result = main_script.main(predict_argv(images, weights, out))
    assert result["images"] == 2 and result["predicted"] == 2 and result["skipped"] == 0
    expected = expected_predictions(images, weights)
    assert sorted(expected) == ["park/deep/0002", "street/0001"]
    for name, prediction in expected.items():
        train_ids = cv2.imread(os.path.join(out, "train_ids", name + ".png"), cv2.IMREAD_UNCHANGED)
        assert train_ids.shape == prediction.shape  # the image's own size
        np.testing.assert_array_equal(train_ids, prediction)
        color = cv2.imread(os.path.join(out, "color", name + ".png"))[:, :, ::-1]
        np.testing.assert_array_equal(color, colorize(prediction))
        picture = cv2.imread(os.path.join(out, "pictures", name + ".png"))
        assert picture.shape[0] > prediction.shape[0] and picture.shape[1] >= 2 * prediction.shape[1]
    assert not os.path.exists(tmp_path / "runs" / "basic")  # predict mode writes only --save-predictions

    # Rerun: every image is done; a lost picture is made again, and only that image is predicted.
    picture = os.path.join(out, "pictures", "street", "0001.png")
    kept = os.path.join(out, "train_ids", "park", "deep", "0002.png")
    before = os.stat(kept).st_mtime_ns
    result = main_script.main(predict_argv(images, weights, out))
    assert (result["predicted"], result["skipped"]) == (0, 2)
    os.remove(picture)
    result = main_script.main(predict_argv(images, weights, out))
    assert (result["predicted"], result["skipped"]) == (1, 1) and os.path.isfile(picture)
    assert os.stat(kept).st_mtime_ns == before


def test_other_settings_ask_for_overwrite_and_flip_is_applied(images, weights, tmp_path, capsys):
    out = str(tmp_path / "predictions")
    main_script.main(predict_argv(images, weights, out))
    code, err = run_refused(capsys, main_script.main, predict_argv(images, weights, out, "--flip-when-test"))
    assert code == 2 and err.count("\n") == 1 and "--overwrite" in err and "flip" in err, err
    result = main_script.main(predict_argv(images, weights, out, "--flip-when-test", "--overwrite"))
    assert result["predicted"] == 2
    for name, prediction in expected_predictions(images, weights, flip=True).items():
        np.testing.assert_array_equal(cv2.imread(os.path.join(out, "train_ids", name + ".png"), cv2.IMREAD_UNCHANGED),
                                      prediction)


def test_multiscale_predictions(images, weights, tmp_path):
    out = str(tmp_path / "predictions")
    main_script.main(predict_argv(images, weights, out, "--scales", "0.75,1.0,1.5", "--flip-when-test"))
    for name, prediction in expected_predictions(images, weights, flip=True, scales=(0.75, 1.0, 1.5)).items():
        np.testing.assert_array_equal(cv2.imread(os.path.join(out, "train_ids", name + ".png"), cv2.IMREAD_UNCHANGED),
                                      prediction)


def test_scales_in_training_are_refused(images, weights, tmp_path, capsys):
    # Validation during training stays at one scale; test mode takes --scales (tests/test_modules.py).
    out = str(tmp_path / "runs")
    argv = ["--mode", "train", "--restore-from", weights, "--target-dataset", "folder", "--data-dir", images,
            "--label-dir", images, "--scales", "0.5,1.0", "--log-tb-dir", out, *COMMON]
    assert_one_line_refusal(*run_refused(capsys, main_script.main, argv), "--scales", out)


def test_predict_runs_on_a_benchmark_target(weights, tmp_path):
    make_acdc(str(tmp_path / "acdc"), conditions=("fog", "night"))
    out = str(tmp_path / "predictions")
    argv = ["--mode", "predict", "--restore-from", weights, "--target-dataset", "acdc", "--data-dir",
            str(tmp_path / "acdc"), "--conditions", "fog,night", "--save-predictions", out, "--log-tb-dir", str(tmp_path / "runs"), *COMMON]
    assert main_script.main(argv)["images"] == 2
    names = sorted(os.path.relpath(os.path.join(d, f), os.path.join(out, "pictures"))
                   for d, _, files in os.walk(os.path.join(out, "pictures")) for f in files)
    assert names == ["fog/GOPR0050/GOPR0050_frame_000000_rgb_anon.png",
                     "night/GOPR0151/GOPR0151_frame_000000_rgb_anon.png"]


def without(argv, flag):
    i = argv.index(flag)
    return argv[:i] + argv[i + 2:]


@pytest.mark.parametrize("flag", ["--restore-from", "--save-predictions"])
def test_a_missing_flag_is_one_line(images, weights, tmp_path, capsys, flag):
    out = str(tmp_path / "predictions")
    argv = without(predict_argv(images, weights, out), flag)
    assert_one_line_refusal(*run_refused(capsys, main_script.main, argv), flag, out)
    assert not os.path.exists(tmp_path / "runs")


def test_predictions_inside_the_image_folder_are_refused(images, weights, tmp_path, capsys):
    # A later scan of the folder would take the predicted PNGs for images.
    inside = os.path.join(images, "predictions")
    argv = predict_argv(images, weights, inside)
    assert_one_line_refusal(*run_refused(capsys, main_script.main, argv), "--save-predictions", inside)
    # test mode too, where the folder holds predictions at the ground truth's size
    for rel, (width, height) in SIZES.items():
        _write(str(tmp_path / "labels" / (os.path.splitext(rel)[0] + ".png")), np.zeros((height, width), np.uint8))
    argv[argv.index("predict")] = "test"
    argv += ["--label-dir", str(tmp_path / "labels")]
    assert_one_line_refusal(*run_refused(capsys, main_script.main, argv), "--save-predictions", inside)
    assert not os.path.exists(inside)


def test_missing_weights_or_images_are_one_line(images, weights, tmp_path, capsys):
    out = str(tmp_path / "predictions")
    argv = predict_argv(images, str(tmp_path / "nowhere.pth"), out)
    assert_one_line_refusal(*run_refused(capsys, main_script.main, argv), "nowhere.pth", out)
    argv = predict_argv(str(tmp_path / "no_images"), weights, out)
    assert_one_line_refusal(*run_refused(capsys, main_script.main, argv), "no_images", out)


def test_pictures_carry_titles_and_a_legend():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)
    label = np.zeros((32, 64), np.uint8)
    label[:, 20:40] = 11  # person
    label[:, 40:] = 13  # car
    bare = label_panel(image, [label])
    picture = labelled_picture([(image, [label])], ["image", "prediction"])
    assert picture.ndim == 3 and picture.dtype == np.uint8 and picture.shape[0] > bare.shape[0]
    # The narrow panel is enlarged by a whole factor so that the text fits; its rows lie in between.
    factor = picture.shape[1] // bare.shape[1]
    assert factor >= 2 and picture.shape[1] == bare.shape[1] * factor
    enlarged = cv2.resize(bare, (bare.shape[1] * factor, bare.shape[0] * factor), interpolation=cv2.INTER_NEAREST)
    top = next(y for y in range(picture.shape[0]) if np.array_equal(picture[y], enlarged[0]))
    bottom = top + enlarged.shape[0]
    np.testing.assert_array_equal(picture[top:bottom], enlarged)
    header, footer = picture[:top], picture[bottom:]
    assert top > 0 and (header.max(axis=2) < 100).sum() >= 20  # dark title text on the white strip above
    # Below: one swatch for every class present (road, person, car), and no other; found by their
    # geometry (squares with a grey frame), never by the colours the text's anti-aliasing makes.
    assert legend_swatches(footer) == [tuple(PALETTE[c]) for c in (0, 11, 13)]
    text = footer.max(axis=2) < 100
    for y, x, side in swatch_boxes(footer):
        text[y:y + side, x:x + side] = False
    assert text.sum() >= 20  # the class names, beside the swatches
    everything = labelled_picture([(image, [label])], ["image", "prediction"], legend_classes="all")
    assert legend_swatches(everything[bottom:]) == [tuple(PALETTE[c]) for c in range(19)]


FRAME = (128, 128, 128)  # the grey frame utils/visualize.py draws around each legend swatch


def swatch_boxes(strip, min_side=6):
    """``(y, x, side)`` of every square in ``strip`` with a one-pixel frame of :data:`FRAME` and a
    uniform inside, in reading order."""
    frame = (strip == FRAME).all(axis=2)
    boxes = []
    for y, x in zip(*np.nonzero(frame)):
        if (x > 0 and frame[y, x - 1]) or (y > 0 and frame[y - 1, x]):
            continue  # not a top-left corner
        side = 0
        while x + side < frame.shape[1] and frame[y, x + side]:
            side += 1
        if side < min_side or y + side > frame.shape[0]:
            continue
        edges = frame[y + side - 1, x:x + side].all() and frame[y:y + side, x].all() and frame[y:y + side, x + side - 1].all()
        inside = strip[y + 1:y + side - 1, x + 1:x + side - 1].reshape(-1, 3)
        if edges and (inside == inside[0]).all():
            boxes.append((int(y), int(x), side))
    return sorted(boxes)


def legend_swatches(strip):
    """The colours of the legend's swatches in ``strip``, in reading order."""
    return [tuple(int(v) for v in strip[y + side // 2, x + side // 2]) for y, x, side in swatch_boxes(strip)]
