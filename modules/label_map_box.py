"""A black box known only by its label maps: a folder of train-id PNGs, ``<name>.png`` for each image
(its path inside the split without the extension; or named as the target's pseudo-labels are, e.g.
``<city>/<stem>_gtFine_labelIds.png`` for Cityscapes), in the folder itself or under ``<split>/`` or
``label_ids/<split>/`` as the pseudo-label stage writes them, as a prediction service returns them.
Given as ``--restore-from DIR``, ``--mode test`` scores the maps against the split's labels and
``--mode predict`` pictures them, as for a network; nothing is run. A map of another size than the
label (or image) is resized to it by nearest neighbour; a pixel the service left without a class
(255) counts as a miss. Label maps carry no scores, so no label-free score is computed for them."""
import os

import cv2
import numpy as np
import torch

from datasets.base import TargetDataset, check_label_values
from utils.cli import UserError, progress
from utils.fingerprint import fingerprint
from utils.io import read_label
from utils.metrics import image_confusion, scores_from_confusion


def label_map_paths(folder, names, split, suffix=".png", flag="--restore-from"):
    """``{name: path}`` of the label map of every image, from the layout and naming (``<name>.png``,
    or ``<name><suffix>``, the target's pseudo-label name) of ``folder`` that hold the most of them;
    one missing is a one-line ``UserError``."""
    best = None
    roots = (os.path.join(folder, "label_ids", split), os.path.join(folder, split), folder)
    layouts = [(root, ending) for root in roots for ending in dict.fromkeys((".png", suffix))]
    for root, ending in layouts:
        paths = {name: os.path.join(root, name + ending) for name in names}
        missing = [path for path in paths.values() if not os.path.isfile(path)]
        if not missing:
            return paths
        best = min(best or missing, missing, key=len)
    tried = " or ".join(dict.fromkeys(os.path.join(root, "<name>" + ending) for root, ending in layouts))
    raise UserError(f"{flag} {folder}: no label map for {len(best)} of the {len(names)} images of split {split!r} "
                    f"in the layout that holds the most, e.g. {best[0]} (looked for {tried}; a folder of label "
                    "maps holds <name>.png for every image; weights are a file)")


def read_label_map(path, shape, num_classes):
    """The label map at ``path`` at ``shape`` (height, width), as ``uint8``."""
    label_map = read_label(path)
    check_label_values(label_map, num_classes, path)
    if label_map.shape != tuple(shape):
        label_map = cv2.resize(label_map, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return label_map.astype(np.uint8)


def check_flags(config):
    """The flags that would do nothing for label maps are one line each."""
    e = config.evaluation
    for flag, given in (("--save-predictions", config.mode == "test" and e.save_predictions),
                        ("--flip-when-test", e.flip_when_test), ("--scales", tuple(e.scales) != (1.0,))):
        if given:
            raise UserError(f"{flag} does nothing for a folder of label maps (--restore-from {config.restore_from}): "
                            "drop it" + ("; --mode predict pictures the maps" if flag == "--save-predictions" else ""))


def test_scores(config):
    """The scores of the label maps in ``--restore-from`` on the ``--val-split`` labels (per condition
    too, where the target scores conditions), in the format of a network's test."""
    check_flags(config)
    d, num_classes = config.data, config.network.num_classes
    target = d.target()
    dataset = TargetDataset(target, d.val_split, input_size=config.network.input_size, labels=True,
                            list_root=d.lists, num_classes=num_classes, resize_backend=d.resize_backend)
    maps = label_map_paths(config.restore_from, dataset.names, d.val_split, target.pseudo_label_suffix)
    total = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    conditions = {c: np.zeros_like(total) for c in d.scored_conditions()}
    for _, label_path, name in progress(dataset.samples, desc="test: label maps", unit="image"):
        label = read_label(label_path)
        check_label_values(label, num_classes, label_path)
        confusion = image_confusion(read_label_map(maps[name], label.shape, num_classes), label, num_classes)
        total += confusion
        if name.split("/", 1)[0] in conditions:
            conditions[name.split("/", 1)[0]] += confusion
    scores = scores_from_confusion(total)
    if conditions:
        scores["conditions"] = {c: scores_from_confusion(m) for c, m in conditions.items()}
    return scores


def settings(maps):
    """What decides predict mode's outputs from label maps: the map files themselves."""
    return {"label_maps": fingerprint(list(maps.values()), names=list(maps))}


def predictions(maps, names, sizes, num_classes, done):
    """What predict mode's writer takes, one image at a time, for the images not ``done``."""
    for index, name in enumerate(names):
        if name not in done:
            label_map = read_label_map(maps[name], sizes[index], num_classes)
            yield {"name": [name], "label": [torch.from_numpy(label_map)], "index": [index]}
