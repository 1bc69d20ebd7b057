"""ACDC (Adverse Conditions Dataset with Correspondences), a target domain: fog, night, rain and snow.

Layout (the official download, ``rgb_anon_trainvaltest.zip`` and ``gt_trainval.zip`` unpacked into
one root, ``--data-dir``)::

    <data-dir>/rgb_anon/<condition>/<split>/<sequence>/<sequence>_frame_<n>_rgb_anon.png
    <data-dir>/gt/<condition>/<split>/<sequence>/<sequence>_frame_<n>_gt_labelTrainIds.png   train ids, 1920x1080

Items are named ``<condition>/<sequence>/<sequence>_frame_<n>_rgb_anon`` (the image's path without
its split), so pseudo-labels and predictions mirror the images. ``--conditions`` chooses the
conditions (default: all four, each of which must be there: a root with fewer, such as the synthetic
benchmark's fog and night, is refused with the ``--conditions`` it can pass); evaluation scores each
condition on its own besides the whole split.
"""
import glob
import os

from datasets.base import Target

# The file naming ACDC shares with Dark Zurich (same group, same tools): anonymised images and
# train-id labels named after them.
IMAGE_PATTERN = "*_rgb_anon.png"
LABEL_SUFFIX = "_gt_labelTrainIds.png"


def label_file(folder, name):
    """The train-id label in ``folder`` of the image named ``name`` (``<...>/<stem>_rgb_anon``)."""
    stem = name[:-len("_rgb_anon")] if name.endswith("_rgb_anon") else name
    return os.path.join(folder, stem + LABEL_SUFFIX)


def scan_sequences(folder):
    """The images ``<sequence>/<stem>_rgb_anon.png`` of one condition folder, relative to it."""
    return [os.path.relpath(path, folder).replace(os.sep, "/")
            for path in glob.glob(os.path.join(glob.escape(folder), "*", IMAGE_PATTERN))]


class ACDC(Target):
    key, title = "acdc", "ACDC"
    default_data_dir = "./data/ACDC"
    image_folder, label_folder = "rgb_anon", "gt"
    layout_hint = "rgb_anon/<condition>/<split>/<sequence>/*_rgb_anon.png under the ACDC root --data-dir"
    all_conditions = ("fog", "night", "rain", "snow")
    condition_word = "condition"
    per_condition_scores = True

    def image_dirs(self, split):
        folders = []
        for condition in self.conditions_of(split):
            folders.append((os.path.join(self.images, condition),
                            f"ACDC condition folder not found: {os.path.join(self.images, condition)} "
                            f"({self._conditions_hint(split)})"))
            split_dir = os.path.join(self.images, condition, split)
            folders.append((split_dir, f"no images of split {split!r} of condition {condition}: folder not found: "
                                       f"{split_dir}"))
        return folders

    def _conditions_hint(self, split):
        """What was asked for and, when it was the default (every condition), what to pass instead: a
        partial download is not read as if it were the whole of ACDC without being told so."""
        asked = f"--conditions {','.join(self.conditions_of(split))}"
        if self.conditions is not None or not os.path.isdir(self.images):
            return asked
        present = [c for c in self.all_conditions if os.path.isdir(os.path.join(self.images, c))]
        if not present:
            return asked
        return f"{asked}, the default; this root has {','.join(present)}: pass --conditions {','.join(present)}"

    def scan(self, split):
        relative = []
        for condition in self.conditions_of(split):
            relative += [condition + "/" + rel for rel in scan_sequences(os.path.join(self.images, condition, split))]
        return sorted(relative)

    def scan_hint(self, split):
        return f"<sequence>/{IMAGE_PATTERN} in {os.path.join(self.images, '<condition>', split)}"

    def image_path(self, split, relative):
        condition, rest = relative.split("/", 1)
        return os.path.join(self.images, condition, split, rest)

    def label_dirs(self, split):
        return [(os.path.join(self.labels, condition, split),
                 f"label folder not found: {os.path.join(self.labels, condition, split)} (ACDC train-id labels "
                 f"of condition {condition}, split {split!r}, from gt_trainval.zip)")
                for condition in self.conditions_of(split)]

    def label_path(self, split, name):
        condition, rest = name.split("/", 1)
        return label_file(os.path.join(self.labels, condition, split), rest)
