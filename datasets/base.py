"""The reading step every dataset shares: ``LabelledImages`` turns a list of (image path, label
path, name) into items ``dict(image, label, name, index)``; the source-domain and hard-patch
datasets are thin subclasses that only say where their files are and how a label file becomes
train ids. A target domain is a :class:`Target` (where its images and labels lie, how they are
named: ``datasets/cityscapes.py``, ``acdc.py``, ``darkzurich.py``, ``folder.py``, chosen by name in
``datasets/targets.py``) read by :class:`TargetDataset`. Pixel conventions and resizing are
``datasets/pixels.py``.
"""
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.pixels import check_resize_backend, resize_image, resize_label, to_network_input
from utils.cli import UserError
from utils.io import check_class_sets_header, class_set_bits, read_class_sets, read_image_bgr, read_label, stored_shape
from utils.labels import IGNORE_INDEX


def check_label_values(label, num_classes, path):
    """Train ids must be ``0..num_classes-1`` or 255 (ignore); otherwise name the file and values."""
    if label.dtype == np.uint8:
        counts = np.bincount(label.ravel(), minlength=256)
        bad = [v for v in np.flatnonzero(counts) if num_classes <= v != IGNORE_INDEX]
    else:
        bad = [v for v in np.unique(label) if not (0 <= v < num_classes or v == IGNORE_INDEX)]
    if bad:
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
        raise UserError(f"label values outside 0..{num_classes - 1} and {IGNORE_INDEX} in {path}: {shown} "
                        f"(is it a label-id file? convert it with utils/transfer_trainid.py)")


def check_files_exist(paths, what):
    """Fail before training starts when listed files are missing: name the first and the count."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" ({len(missing)} of {len(paths)} missing)" if len(missing) > 1 else ""
        raise UserError(f"{what} not found: {missing[0]}{more}")


def _size_text(shape):
    return f"{shape[1]}x{shape[0]}"


def check_size_on_disk(image_path, label_path, check=None):
    """Refuse a label whose stored size is not its image's (``check(label_shape, image_shape,
    label_path)`` for another rule), from the headers alone; unreadable headers are let through,
    sizes beyond the bounds of ``utils/io.py`` are refused."""
    image_shape, label_shape = stored_shape(image_path), stored_shape(label_path, "label")
    if image_shape is None or label_shape is None:
        return
    if check is not None:
        check(label_shape, image_shape, label_path)
    elif label_shape != image_shape:
        raise UserError(f"label size {_size_text(label_shape)} does not match its image "
                        f"({_size_text(image_shape)}): {label_path}")


class LabelledImages(Dataset):
    """Items ``dict(image, label, name, index)`` from ``samples`` = [(image_path, label_path, name)].

    ``label_path`` is ``None`` for every sample when there are no labels (no label is read then).
    Images are resized to ``input_size=(W, H)`` (``None``: kept). Labels are checked against the
    original image size, then resized with nearest neighbour to the input size when
    ``resize_label`` (training) or kept at full resolution (evaluation). Both resize with
    ``resize_backend`` (see :data:`RESIZE_BACKENDS`). Subclasses override
    :meth:`read_train_ids` when their label files do not hold train ids.
    """

    # Labels written at the input size (pseudo-labels) are accepted as well as full-size ones.
    accept_input_size_labels = False
    # Relative size difference tolerated between an image and its label (both are resized).
    label_size_tolerance = 0.0

    def __init__(self, samples, input_size=None, resize_label=True, num_classes=19, resize_backend="pil"):
        check_resize_backend(resize_backend)
        self.samples = list(samples)
        self.input_size = tuple(input_size) if input_size is not None else None
        self.resize_label = resize_label
        self.resize_backend = resize_backend
        self.num_classes = num_classes
        self.has_labels = bool(self.samples) and self.samples[0][1] is not None

    def __len__(self):
        return len(self.samples)

    @property
    def names(self):
        return [name for _, _, name in self.samples]

    def read_train_ids(self, path):
        """An H×W array of train ids from a label file."""
        return read_label(path)

    def _check_label_size(self, label, image_shape, path):
        self._check_label_shape(label.shape, image_shape, path)

    def _check_label_shape(self, label_shape, image_shape, path):
        sizes = [image_shape[:2]]
        if self.accept_input_size_labels and self.input_size is not None:
            sizes.append((self.input_size[1], self.input_size[0]))
        tol = self.label_size_tolerance
        for h, w in sizes:
            if abs(label_shape[0] - h) <= tol * h and abs(label_shape[1] - w) <= tol * w:
                return
        expected = " or ".join(dict.fromkeys(_size_text(s) for s in sizes))
        raise UserError(f"label size {_size_text(label_shape)} does not match its image ({expected}): {path}")

    def check_label_sizes(self):
        """Compare every label's size with its image's from the file headers (no pixels decoded),
        so that a label of another size stops a run before it writes anything; a file whose header
        cannot be read is left to the reading step, which names it."""
        for image_path, label_path, _ in self.samples:
            check_size_on_disk(image_path, label_path, self._check_label_shape)

    # An optional ``utils.image_cache.ResizedImageCache`` (``--image-cache``), used when images are resized.
    image_cache = None

    def _read_resized(self, image_path):
        image = read_image_bgr(image_path)
        original_shape = image.shape[:2]
        if self.input_size is not None:
            image = resize_image(image, self.input_size, self.resize_backend)
        return image, original_shape

    def __getitem__(self, index):
        image_path, label_path, name = self.samples[index]
        if self.image_cache is not None and self.input_size is not None:
            image, original_shape = self.image_cache.load(image_path, self.input_size, self.resize_backend,
                                                          self._read_resized)
        else:
            image, original_shape = self._read_resized(image_path)
        item = {"image": to_network_input(image), "name": name, "index": index}
        if label_path is not None:
            label = self.read_train_ids(label_path)
            self._check_label_size(label, original_shape, label_path)
            check_label_values(label, self.num_classes, label_path)
            if self.resize_label:
                label = resize_label(label, (image.shape[1], image.shape[0]), self.resize_backend)
            item["label"] = torch.from_numpy(label.astype(np.int64))
        return item


# -- target domains -------------------------------------------------------------------------------------

class Target:
    """Where a target domain's images and train-id labels lie and how they are named: one subclass
    per layout, chosen by its ``key`` (``--target-dataset``) in ``datasets/targets.py``.

    An item is named by its image's path inside the split, without the image suffix (``<city>/<stem>``
    for Cityscapes, ``<condition>/<sequence>/<file stem>`` for ACDC): pseudo-labels are written to
    ``label_ids/<split>/<name><pseudo_label_suffix>`` and predictions to ``<name>.png``, so both
    mirror the images. A target with conditions (``all_conditions``: ACDC's weather, Dark Zurich's
    times of day) names its items ``<condition>/...``. Subclasses say where the folders are
    (:meth:`image_dirs`, :meth:`label_dirs`), find a split's images (:meth:`scan`) and place an
    image and its label (:meth:`image_path`, :meth:`label_path`); the rest is shared.
    """
    key = None                    # the --target-dataset name
    title = None                  # the name in messages
    default_data_dir = None       # None: --data-dir must be given
    image_folder = ""             # the images, under --data-dir
    label_folder = None           # the train-id labels, under --data-dir; None: only with --label-dir
    layout_hint = ""              # where the images are expected, for messages
    image_suffix = ".png"         # taken off an image's relative path to name its item
    pseudo_label_suffix = ".png"  # added to an item's name for its pseudo-label file
    default_list_root = None      # folder of <split>.txt image lists read when --list-root is not given
    all_conditions = ()           # what --conditions chooses from
    condition_word = "condition"
    per_condition_scores = False  # evaluation also scores every condition on its own

    def __init__(self, data_dir=None, image_root=None, label_root=None, conditions=None):
        conditions = tuple(conditions) if conditions else None
        if conditions and not self.all_conditions:
            raise UserError(f"--conditions: the {self.key} target has no conditions (acdc and darkzurich have)")
        for condition in conditions or ():
            if condition not in self.all_conditions:
                raise UserError(f"--conditions: {condition!r} is no {self.title} {self.condition_word} (choose from "
                                f"{', '.join(self.all_conditions)})")
        self.data_dir = data_dir or self.default_data_dir
        if self.data_dir is None and image_root is None:
            raise UserError(f"--target-dataset {self.key} needs --data-dir: the folder of the images "
                            f"({self.layout_hint})")
        self.images = image_root or (os.path.join(self.data_dir, self.image_folder) if self.image_folder
                                     else self.data_dir)
        self.labels = label_root or (os.path.join(self.data_dir, self.label_folder)
                                     if self.label_folder and self.data_dir else None)
        self.conditions = conditions

    @classmethod
    def default_conditions(cls, split):
        return cls.all_conditions

    def conditions_of(self, split):
        """The conditions a split is read in: ``--conditions``, else the target's default."""
        return self.conditions or self.default_conditions(split)

    def condition(self, name):
        """The condition of an item (``None`` for a target without conditions)."""
        return name.split("/", 1)[0] if self.all_conditions else None

    # -- the layout, said by each target -------------------------------------------------------------
    def image_dirs(self, split):
        """``[(folder, message), ...]``: the folders a split's images need, in the order they are
        checked, each with the one-line message for its absence."""
        folder = os.path.join(self.images, split)
        return [(folder, f"no images of split {split!r}: folder not found: {folder}")]

    def scan(self, split):
        """The split's images: sorted paths relative to the split (what image lists hold)."""
        raise NotImplementedError

    def scan_hint(self, split):
        """What :meth:`scan` looks for, for the message when it finds nothing."""
        return self.layout_hint

    def image_path(self, split, relative):
        return os.path.join(self.images, split, relative)

    def name(self, relative):
        if relative.endswith(self.image_suffix):
            return relative[:-len(self.image_suffix)]
        return os.path.splitext(relative)[0]

    def label_dirs(self, split):
        """Like :meth:`image_dirs`, for the train-id labels."""
        folder = os.path.join(self.labels, split)
        return [(folder, f"label folder not found: {folder} (train-id labels of split {split!r})")]

    def label_path(self, split, name):
        raise NotImplementedError

    def no_labels(self):
        raise UserError(f"--target-dataset {self.key}: no label folder: give --label-dir")

    # -- shared ---------------------------------------------------------------------------------------
    def check_images(self, split):
        if not os.path.isdir(self.images):
            raise UserError(f"image folder not found: {self.images} ({self.layout_hint})")
        for folder, message in self.image_dirs(split):
            if not os.path.isdir(folder):
                raise UserError(message)

    def missing_label_dir(self, split):
        """The message for the first absent label folder of ``split``, or ``None`` when all exist."""
        if self.labels is None:
            return f"no labels given (--label-dir) for --target-dataset {self.key}"
        return next((message for folder, message in self.label_dirs(split) if not os.path.isdir(folder)), None)

    def check_labels(self, split):
        if self.labels is None:
            self.no_labels()
        message = self.missing_label_dir(split)
        if message:
            raise UserError(message)

    def list_images(self, split, list_root=None):
        """Relative image paths of ``split``: ``<list_root>/<split>.txt`` when that file exists (first
        token per line, blank lines ignored; a leading ``<split>/`` is dropped; for a target with
        conditions, only the chosen ones), otherwise :meth:`scan`."""
        if list_root is not None:
            list_file = os.path.join(list_root, f"{split}.txt")
            if os.path.isfile(list_file):
                with open(list_file) as f:
                    entries = [line.split()[0] for line in f if line.strip()]
                # Some published lists carry the split folder in front of the city.
                entries = [e[len(split) + 1:] if e.startswith(split + "/") else e for e in entries]
                if self.all_conditions:
                    chosen = set(self.conditions_of(split))
                    entries = [e for e in entries if e.split("/", 1)[0] in chosen]
                return entries
        return self.scan(split)


def resolve_pseudo_label_root(root, split="train", depth=1):
    """The folder holding the pseudo-labels of a split (``<city>/<stem>_gtFine_labelIds.png`` for
    Cityscapes; ``<name><suffix>`` for any target, ``depth`` folders deep at most).

    Accepts the pseudo-labelling ``--save`` folder itself, its ``label_ids`` folder or the split
    folder: tries ``<root>/label_ids/<split>``, ``<root>/<split>``, then ``<root>``.
    """
    if not os.path.isdir(root):
        raise UserError(f"pseudo-label folder not found: {root}")
    candidates = [os.path.join(root, "label_ids", split), os.path.join(root, split), root]
    for folder in candidates:
        if os.path.isdir(folder) and _holds_labels(folder, max(1, depth)):
            return folder
    where = "<city>/*.png" if depth <= 1 else "PNG files"
    raise UserError(f"no pseudo-labels in {root}: looked for {where} under " + ", ".join(candidates))


def _holds_labels(folder, depth):
    """True when ``folder`` has PNG files directly or at most ``depth`` subfolders below."""
    subfolders = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file() and entry.name.endswith(".png"):
                return True
            if entry.is_dir():
                subfolders.append(entry.path)
    return depth > 0 and any(_holds_labels(sub, depth - 1) for sub in subfolders)


class TargetDataset(LabelledImages):
    """The images of one split of a :class:`Target`, with its train-id ground truth (``labels``),
    pseudo-labels (``pseudo_label_root``, which takes precedence) or no labels.

    With ``complementary``, a folder of ``generate_pseudo_labels.py --complementary-below`` maps named
    as the pseudo-labels, each item also has ``complementary``, the classes its pixels are not (H×W
    int64, bit ``c`` for class ``c``).

    ``images`` are the paths relative to the split; ``names`` the items' names. Every listed file
    is checked at construction, and ground truth's sizes against the images' (from the headers),
    so a wrong path or a label of another size fails at once, before a run writes anything.
    """

    def __init__(self, target, split, input_size=(1024, 512), labels=False, list_root=None, pseudo_label_root=None,
                 resize_label=True, num_classes=19, resize_backend="pil", complementary=None):
        self.target, self.split = target, split
        target.check_images(split)
        self.images = target.list_images(split, list_root)
        if not self.images:
            list_file = os.path.join(list_root, f"{split}.txt") if list_root is not None else None
            where = f"the image list {list_file} is empty" if list_file and os.path.isfile(list_file) \
                else f"found no {target.scan_hint(split)}"
            raise UserError(f"no images of split {split!r}: {where}")
        image_paths = [target.image_path(split, rel) for rel in self.images]
        check_files_exist(image_paths, "listed image")
        names = [target.name(rel) for rel in self.images]
        seen = {}
        for name, rel in zip(names, self.images):
            if name in seen:
                raise UserError(f"two images have the name {name}: {seen[name]} and {rel} (their labels and outputs "
                                "would be one file); rename one")
            seen[name] = rel

        self.pseudo_label_dir = None
        if pseudo_label_root is not None:
            depth = max(name.count("/") for name in names)
            self.pseudo_label_dir = resolve_pseudo_label_root(pseudo_label_root, split, depth)
            label_paths = [os.path.join(self.pseudo_label_dir, name + target.pseudo_label_suffix) for name in names]
            check_files_exist(label_paths, "pseudo-label")
            if complementary is not None:
                if not os.path.isdir(complementary):
                    raise UserError(f"no complementary labels in {complementary}: make the pseudo-labels with "
                                    "generate_pseudo_labels.py --complementary-below P")
                self.complementary_paths = [os.path.join(complementary, name + target.pseudo_label_suffix)
                                            for name in names]
                check_files_exist(self.complementary_paths, "complementary label")
                for path in self.complementary_paths:
                    check_class_sets_header(path)
            # Pseudo-labels are written at the input size of the labelling run.
            self.accept_input_size_labels = True
        elif labels:
            target.check_labels(split)
            label_paths = [target.label_path(split, name) for name in names]
            check_files_exist(label_paths, "label")
        else:
            label_paths = [None] * len(names)
        super().__init__(zip(image_paths, label_paths, names), input_size=input_size,
                         resize_label=resize_label, num_classes=num_classes, resize_backend=resize_backend)
        if labels and pseudo_label_root is None:
            self.check_label_sizes()

    complementary_paths = None

    def __getitem__(self, index):
        item = super().__getitem__(index)
        if self.complementary_paths is not None:
            sets, label = read_class_sets(self.complementary_paths[index]), item["label"]
            if sets.shape[:2] != tuple(label.shape):  # written with the pseudo-label: resized as it is
                size = (label.shape[1], label.shape[0])
                sets = np.stack([resize_label(sets[:, :, c], size, self.resize_backend) for c in range(3)], axis=-1)
            item["complementary"] = torch.from_numpy(class_set_bits(sets))
        return item


def collate(samples):
    """A batch of items: images stacked, names as a list; labels stacked, or a list when their
    sizes differ (full-resolution labels in evaluation)."""
    batch = {"name": [s["name"] for s in samples], "index": torch.tensor([s["index"] for s in samples])}
    if "image" in samples[0]:
        batch["image"] = torch.stack([s["image"] for s in samples])
    for key in ("label", "complementary"):
        if key in samples[0]:
            maps = [s[key] for s in samples]
            batch[key] = torch.stack(maps) if all(m.shape == maps[0].shape for m in maps) else maps
    return batch
