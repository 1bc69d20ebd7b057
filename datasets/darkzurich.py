"""Dark Zurich, a target domain: day, twilight and night drives through Zurich.

Layout (the official download, ``Dark_Zurich_train_anon.zip`` and ``Dark_Zurich_val_anon.zip``
unpacked into one root, ``--data-dir``)::

    <data-dir>/rgb_anon/<split>/<time of day>/<sequence>/<name>_rgb_anon.png    train: day, twilight, night; val: night
    <data-dir>/gt/val/night/<sequence>/<name>_gt_labelTrainIds.png              train ids, 1920x1080 (val only)

Items are named ``<time of day>/<sequence>/<name>_rgb_anon`` (the image's path inside its split).
``--conditions`` chooses the times of day (default: those the split has in the official layout,
day, twilight and night for train, night otherwise); ``--conditions night`` is the usual
night-only adaptation.
"""
import os

from datasets.acdc import IMAGE_PATTERN, label_file, scan_sequences
from datasets.base import Target


class DarkZurich(Target):
    key, title = "darkzurich", "Dark Zurich"
    default_data_dir = "./data/DarkZurich"
    image_folder, label_folder = "rgb_anon", "gt"
    layout_hint = "rgb_anon/<split>/<time of day>/<sequence>/*_rgb_anon.png under the Dark Zurich root --data-dir"
    all_conditions = ("day", "twilight", "night")
    condition_word = "time of day"

    @classmethod
    def default_conditions(cls, split):
        return cls.all_conditions if split == "train" else ("night",)

    def image_dirs(self, split):
        split_dir = os.path.join(self.images, split)
        folders = [(split_dir, f"no images of split {split!r}: folder not found: {split_dir}")]
        for time in self.conditions_of(split):
            folder = os.path.join(split_dir, time)
            folders.append((folder, f"Dark Zurich time-of-day folder not found: {folder} "
                                    f"(--conditions {','.join(self.conditions_of(split))})"))
        return folders

    def scan(self, split):
        relative = []
        for time in self.conditions_of(split):
            relative += [time + "/" + rel for rel in scan_sequences(os.path.join(self.images, split, time))]
        return sorted(relative)

    def scan_hint(self, split):
        return f"<time of day>/<sequence>/{IMAGE_PATTERN} in {os.path.join(self.images, split)}"

    def image_path(self, split, relative):
        return os.path.join(self.images, split, relative)

    def label_dirs(self, split):
        return [(os.path.join(self.labels, split, time),
                 f"label folder not found: {os.path.join(self.labels, split, time)} (Dark Zurich train-id labels "
                 f"of split {split!r}, {time}; the official ones are val/night)")
                for time in self.conditions_of(split)]

    def label_path(self, split, name):
        return label_file(os.path.join(self.labels, split), name)
