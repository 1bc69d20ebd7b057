"""Tiny on-disk datasets in the real layouts, for tests that run whole stages."""
import os

import cv2
import numpy as np

from utils.labels import cityscapes_label_id_lut


def _write(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, array)


def _scene(rng, width, height):
    """A crude street scene: its label (train ids) and a noisy image whose colour follows the label."""
    label = np.zeros((height, width), np.uint8)
    horizon = height // 2 + int(rng.integers(-height // 8, height // 8 + 1))
    label[:horizon] = 10  # sky
    label[horizon // 2:horizon, : width // 2] = 2  # building
    label[horizon // 2:horizon, width // 2:] = 8  # vegetation
    label[horizon:] = 0  # road
    label[horizon:, : width // 6] = 1  # sidewalk
    x = int(rng.integers(0, width - 8))
    label[horizon:horizon + 6, x:x + 6] = int(rng.choice([13, 6, 7, 12, 18]))
    colours = np.random.default_rng(7).integers(0, 255, size=(256, 3))
    image = colours[label] + rng.normal(0, 10, size=(height, width, 3))
    return label, np.clip(image, 0, 255).astype(np.uint8)


def make_cityscapes(root, train=4, val=3, size=(64, 32), seed=0):
    """``<root>/leftImg8bit/<split>/<city>/…`` images, ``gtFine2`` train ids and ``gtFine`` label ids.

    Returns a dict of paths: ``image_root``, ``label_root`` (train ids), ``label_id_root``.
    """
    rng = np.random.default_rng(seed)
    train_to_label = np.zeros(256, np.uint8)
    lut = cityscapes_label_id_lut()
    for label_id in range(255, -1, -1):
        if lut[label_id] != 255:
            train_to_label[lut[label_id]] = label_id
    for split, count, city in (("train", train, "aachen"), ("val", val, "frankfurt")):
        for k in range(count):
            stem = f"{city}_{k:06d}_000019"
            label, image = _scene(rng, *size)
            _write(f"{root}/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png", image)
            _write(f"{root}/gtFine2/{split}/{city}/{stem}_gtFine_labelIds.png", label)
            _write(f"{root}/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png", train_to_label[label])
    return {"image_root": f"{root}/leftImg8bit", "label_root": f"{root}/gtFine2", "label_id_root": f"{root}/gtFine"}


def make_acdc(root, conditions=("fog", "night", "rain", "snow"), train=1, val=1, size=(64, 32), seed=0):
    """``<root>/rgb_anon/<condition>/<split>/<sequence>/<sequence>_frame_<n>_rgb_anon.png`` and the
    train ids in ``gt/.../<sequence>_frame_<n>_gt_labelTrainIds.png``, as ACDC ships them. Returns
    ``{name: label path}`` of the val images (names ``<condition>/<sequence>/<stem>_rgb_anon``)."""
    rng = np.random.default_rng(seed)
    val_labels = {}
    for c, condition in enumerate(conditions):
        for split, count in (("train", train), ("val", val)):
            sequence = f"GOPR{c:02d}{0 if split == 'train' else 5}{c}"
            for k in range(count):
                stem = f"{sequence}_frame_{k:06d}"
                label, image = _scene(rng, *size)
                _write(f"{root}/rgb_anon/{condition}/{split}/{sequence}/{stem}_rgb_anon.png", image)
                path = f"{root}/gt/{condition}/{split}/{sequence}/{stem}_gt_labelTrainIds.png"
                _write(path, label)
                if split == "val":
                    val_labels[f"{condition}/{sequence}/{stem}_rgb_anon"] = path
    return val_labels


def make_darkzurich(root, train=1, val=2, size=(64, 32), seed=0):
    """``<root>/rgb_anon/<split>/<time of day>/<sequence>/<name>_rgb_anon.png`` (train: day,
    twilight, night; val: night) and ``gt/val/night/<sequence>/<name>_gt_labelTrainIds.png``."""
    rng = np.random.default_rng(seed)
    for split, times, count in (("train", ("day", "twilight", "night"), train), ("val", ("night",), val)):
        for t, time in enumerate(times):
            sequence = f"GOPR03{t}{0 if split == 'train' else 5}"
            for k in range(count):
                stem = f"{sequence}_frame_{k:06d}"
                label, image = _scene(rng, *size)
                _write(f"{root}/rgb_anon/{split}/{time}/{sequence}/{stem}_rgb_anon.png", image)
                if split == "val":
                    _write(f"{root}/gt/{split}/{time}/{sequence}/{stem}_gt_labelTrainIds.png", label)
    return root


def make_image_folder(root, label_root, sizes=((64, 32), (64, 32), (96, 48), (64, 32)), seed=0):
    """Images of several sizes and formats in sub-folders (two share a stem), with train-id labels
    mirroring them under ``label_root``. Returns the images' relative paths."""
    rng = np.random.default_rng(seed)
    relative = ["street/0001.jpg", "street/0002.png", "park/0001.png", "park/deep/0003.jpeg"]
    for rel, size in zip(relative, sizes):
        label, image = _scene(rng, *size)
        _write(os.path.join(root, rel), image)
        _write(os.path.join(label_root, os.path.splitext(rel)[0] + ".png"), label)
    return relative


def make_pseudo_labels(root, label_root, split="train"):
    """A generator-style ``--save`` folder whose pseudo-labels are the ground truth itself."""
    for dirpath, _, files in os.walk(os.path.join(label_root, split)):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), label_root)
            _write(os.path.join(root, "label_ids", rel), cv2.imread(os.path.join(dirpath, name), cv2.IMREAD_UNCHANGED))
    return root


def make_patches(root, count=5, size=(16, 8), seed=0):
    rng = np.random.default_rng(seed)
    for k in range(count):
        label = rng.choice([0, 6, 7, 255], size=(size[1], size[0])).astype(np.uint8)
        _write(f"{root}/patches/img_{k}.png", rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        _write(f"{root}/labels/img_{k}.png", label)
    return root


def make_gta5(root, count=4, size=(64, 32), seed=1):
    """``images/*.png`` and ``labels/*.png`` holding Cityscapes label ids, as GTA5 ships them."""
    rng = np.random.default_rng(seed)
    lut = cityscapes_label_id_lut()
    train_to_label = {int(lut[i]): i for i in range(255, -1, -1) if lut[i] != 255}
    for k in range(count):
        label, image = _scene(rng, *size)
        ids = np.vectorize(lambda t: train_to_label.get(int(t), 0))(label).astype(np.uint8)
        _write(f"{root}/images/{k + 1:05d}.png", image)
        _write(f"{root}/labels/{k + 1:05d}.png", ids)
    return root


def pil_resized_bgr(image_bgr, size):
    """The published loaders' resize of a BGR image: to RGB, PIL bicubic to ``size=(W, H)``, back to BGR."""
    from PIL import Image

    rgb = Image.fromarray(np.ascontiguousarray(image_bgr[:, :, ::-1]))
    return np.ascontiguousarray(np.asarray(rgb.resize(size, Image.BICUBIC))[:, :, ::-1])


def pil_resized_label(label, size):
    """The published loaders' resize of a label map: PIL nearest to ``size=(W, H)``."""
    from PIL import Image

    return np.array(Image.fromarray(label).resize(size, Image.NEAREST))


def run_refused(capsys, main, argv):
    """Run an entry point's ``main`` as the shell would (``utils.cli.run``); returns its exit code and stderr."""
    import pytest

    from utils.cli import run

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(main, [str(a) for a in argv])
    return exit_info.value.code, capsys.readouterr().err


def assert_one_line_refusal(code, err, names, out):
    """A user mistake: exit 2, one ``error:`` line naming ``names``, nothing written under ``out``."""
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert names in err, err
    assert not os.path.exists(out), f"a refused run wrote {sorted(os.listdir(out))} under {out}"


def tiny_weights(path, seed=0):
    """A ``deeplabv2_tiny`` state dict with 19 classes, saved to ``path``."""
    import torch

    from models.deeplabv2 import get_deeplabv2

    torch.manual_seed(seed)
    torch.save(get_deeplabv2(arch="deeplabv2_tiny").state_dict(), path)
    return path
