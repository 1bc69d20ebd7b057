"""The provider's labelled source domains, GTA5 and SYNTHIA, for source-only training.

Only the provider (``--module-name source_only``) sees these; the adapter never does. Labels are
converted to Cityscapes train ids on the fly, so the original downloads are used as they are::

    GTA5:    <root>/images/*.png      <root>/labels/*.png       Cityscapes label ids (uint8)
    SYNTHIA: <root>/RGB/*.png         <root>/GT/LABELS/*.png    RAND-CITYSCAPES: 16-bit PNG whose
                                                                red channel holds the class id

Images and labels are resized to the input size (bicubic / nearest, with ``resize_backend``).
"""
import glob
import os

from datasets.base import LabelledImages, check_files_exist
from utils.cli import UserError
from utils.io import read_label
from utils.labels import label_ids_to_train_ids, read_synthia_label_ids


def _list_files(root, image_dir, label_dir, list_path):
    """(image, label, name) triples: ``list_path`` entries, or every PNG of ``image_dir``."""
    image_dir, label_dir = os.path.join(root, image_dir), os.path.join(root, label_dir)
    if not os.path.isdir(root):
        raise UserError(f"source dataset folder not found: {root}")
    for folder in (image_dir, label_dir):
        if not os.path.isdir(folder):
            raise UserError(f"folder not found: {folder}")
    if list_path is not None:
        if not os.path.isfile(list_path):
            raise UserError(f"image list not found: {list_path}")
        with open(list_path) as f:
            files = [line.split()[0] for line in f if line.strip()]
    else:
        files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(image_dir), "*.png")))
    if not files:
        raise UserError(f"no images in {list_path or image_dir}")
    image_paths = [os.path.join(image_dir, name) for name in files]
    label_paths = [os.path.join(label_dir, name) for name in files]
    check_files_exist(image_paths, "listed image")
    check_files_exist(label_paths, "label")
    names = [os.path.splitext(name)[0] for name in files]
    return zip(image_paths, label_paths, names)


class _SourceDataset(LabelledImages):
    # A difference of a few pixels between a frame and its label is absorbed by resizing both to
    # the input size; anything larger is a wrong pairing and stays an error.
    label_size_tolerance = 0.02


class GTA5Dataset(_SourceDataset):
    def __init__(self, root, input_size=(1024, 512), list_path=None, num_classes=19, resize_backend="pil"):
        super().__init__(_list_files(root, "images", "labels", list_path), input_size=input_size,
                         num_classes=num_classes, resize_backend=resize_backend)

    def read_train_ids(self, path):
        return label_ids_to_train_ids(read_label(path), "gta5", path)


class SynthiaDataset(_SourceDataset):
    def __init__(self, root, input_size=(1024, 512), list_path=None, num_classes=19, resize_backend="pil"):
        super().__init__(_list_files(root, "RGB", os.path.join("GT", "LABELS"), list_path), input_size=input_size,
                         num_classes=num_classes, resize_backend=resize_backend)

    def read_train_ids(self, path):
        return label_ids_to_train_ids(read_synthia_label_ids(path), "synthia", path)
