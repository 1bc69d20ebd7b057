"""ACDC (Adverse Conditions Dataset with Correspondences), a target domain: fog, night, rain and snow.

Layout (the official download, ``rgb_anon_trainvaltest.zip`` and ``gt_trainval.zip`` unpacked into
one root, ``--data-dir``)::

    <data-dir>/rgb_anon/<condition>/<split>/<sequence>/<sequence>_frame_<n>_rgb_anon.png
    <data-dir>/gt/<condition>/<split>/<sequence>/<sequence>_frame_<n>_gt_labelTrainIds.png   train ids, 1920x1080

Items are named ``<condition>/<sequence>/<sequence>_frame_<n>_rgb_anon`` (the image's path without
its split), so pseudo-labels and predictions mirror the images. ``--conditions`` chooses the
conditions (default: all four); evaluation scores each condition on its own besides the whole split.
"""
import glob
import os

from datasets.base import Target

IMAGE_PATTERN = "*_rgb_anon.png"
LABEL_SUFFIX = "_gt_labelTrainIds.png"


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
                            f"(--conditions {','.join(self.conditions_of(split))})"))
            split_dir = os.path.join(self.images, condition, split)
            folders.append((split_dir, f"no images of split {split!r} of condition {condition}: folder not found: "
                                       f"{split_dir}"))
        return folders

    def scan(self, split):
        relative = []
        for condition in self.conditions_of(split):
            split_dir = os.path.join(self.images, condition, split)
            for path in glob.glob(os.path.join(glob.escape(split_dir), "*", IMAGE_PATTERN)):
                relative.append(condition + "/" + os.path.relpath(path, split_dir).replace(os.sep, "/"))
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
        stem = rest[:-len("_rgb_anon")] if rest.endswith("_rgb_anon") else rest
        return os.path.join(self.labels, condition, split, stem + LABEL_SUFFIX)
