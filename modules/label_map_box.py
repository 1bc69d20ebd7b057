"""A black box known only by its label maps: a folder of train-id PNGs, ``<name>.png`` for each image
(its path inside the split without the extension), as a prediction service returns them. Given as
``--restore-from DIR``, ``--mode test`` scores the maps against the split's labels and ``--mode
predict`` pictures them, as for a network; nothing is run. A map of another size than the label
(or image) is resized to it by nearest neighbour. Label maps carry no scores, so no label-free
score is computed for them."""
import os

import cv2
import numpy as np
import torch

from datasets.base import TargetDataset
from utils.cli import UserError, progress
from utils.io import read_label
from utils.metrics import image_confusion, scores_from_confusion


def label_map_paths(folder, names):
    """``{name: path}`` of the label map of every image; one missing is a one-line ``UserError``."""
    paths = {name: os.path.join(folder, name + ".png") for name in names}
    missing = [path for path in paths.values() if not os.path.isfile(path)]
    if missing:
        raise UserError(f"--restore-from {folder}: no label map for {len(missing)} of the {len(paths)} images, "
                        f"e.g. {missing[0]} (a folder of label maps holds <name>.png for every image)")
    return paths


def read_label_map(path, shape, num_classes):
    """The label map at ``path`` at ``shape`` (height, width); a value not below ``num_classes`` but
    not 255 (ignored) is a one-line ``UserError``."""
    label_map = read_label(path)
    bad = (label_map >= num_classes) & (label_map != 255)
    if bad.any():
        raise UserError(f"{path}: value {int(label_map[bad][0])} is no train id of {num_classes} classes")
    if label_map.shape != tuple(shape):
        label_map = cv2.resize(label_map, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return label_map


def test_scores(config):
    """The scores of the label maps in ``--restore-from`` on the ``--val-split`` labels (per condition
    too, where the target scores conditions), in the format of a network's test."""
    d, num_classes = config.data, config.network.num_classes
    dataset = TargetDataset(d.target(), d.val_split, input_size=config.network.input_size, labels=True,
                            list_root=d.lists, num_classes=num_classes, resize_backend=d.resize_backend)
    maps = label_map_paths(config.restore_from, dataset.names)
    total = np.zeros((num_classes, num_classes), dtype=np.int64)
    conditions = {c: np.zeros_like(total) for c in d.scored_conditions()}
    for _, label_path, name in progress(dataset.samples, desc="test: label maps", unit="image"):
        label = read_label(label_path)
        confusion = image_confusion(read_label_map(maps[name], label.shape, num_classes), label, num_classes)
        total += confusion
        if name.split("/", 1)[0] in conditions:
            conditions[name.split("/", 1)[0]] += confusion
    scores = scores_from_confusion(total)
    if conditions:
        scores["conditions"] = {c: scores_from_confusion(m) for c, m in conditions.items()}
    return scores


def predictions(maps, names, sizes, num_classes, done):
    """What predict mode's writer takes, one image at a time, for the images not ``done``."""
    for index, name in enumerate(names):
        if name not in done:
            label_map = read_label_map(maps[name], sizes[index], num_classes)
            yield {"name": [name], "label": [torch.from_numpy(label_map)], "index": [index]}
