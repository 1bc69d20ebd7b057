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
