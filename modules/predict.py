"""``main.py --mode predict``: the predictions of ``--restore-from`` for every image of a target split,
no labels needed (your own images: ``--target-dataset folder --data-dir DIR``). ``--restore-from``
may also be a black box's folder of label maps (``modules/label_map_box.py``): then its maps are
written and pictured as predictions, and nothing is run.

For each image, named ``<name>`` by its path inside the split without the extension, the run writes
under ``--save-predictions OUT``, at the image's own resolution (the logits at the network's output
are upsampled bilinearly to the image's original size, as evaluation upsamples them to the label's):

- ``train_ids/<name>.png``: the predicted train ids (``uint8``);
- ``color/<name>.png``: the same in the Cityscapes colours;
- ``pictures/<name>.png``: image | colour prediction side by side, with titles and a legend of the
  classes present (tiles at most :data:`PICTURE_WIDTH` pixels wide).

The split is ``--val-split`` (default ``val``; a folder target without a ``val/`` sub-folder is the
whole tree). ``--flip-when-test`` adds the horizontal-flip test-time augmentation; ``--scales``
averages the logits over several input scales, each resized back to the input size first, as the
data stages' ``--multiscale`` and test mode (``utils/inference.multiscale_logits``). The network runs
with its BatchNorm folded into its convolutions unless ``--no-fold-bn`` (``models/fold_bn.py``).

The folder is held and claimed through the run-folder protocol (``utils/run_folder.py``): one run at
a time; a rerun of the same command skips the images whose three files exist (each file is written
atomically, the picture last), so an interrupted run resumes; another network, input size, flip or
weight file, or other scales, is refused unless ``--overwrite``. Images added to the folder later are predicted by a
rerun; the ones done are kept.
"""
import os

import cv2
import torch

from datasets.base import TargetDataset
from modules import label_map_box
from modules.prediction import FileWriter, PredictionData, PredictionModule, run_predict
from modules.providers import check_finite
from utils.cli import UserError, progress
from utils.fingerprint import fingerprint
from utils.inference import multiscale_logits, upsampled_argmax
from utils.io import read_image_bgr, stored_shape, write_png, write_rgb_png
from utils.labels import colorize
from utils.run_folder import check_outside_images, claim_folder, folder_lock, is_within
from utils.visualize import labelled_picture

KINDS = ("train_ids", "color", "pictures")  # the files of one image, the picture written last
PICTURE_WIDTH = 1024  # widest tile of a picture: a 2048-pixel image is shown at half its size
STATE = ".state"


def output_path(save, kind, name):
    return os.path.join(save, kind, name + ".png")


def done_names(save, names):
    """The images whose three files exist (a file exists only once written in full)."""
    return {name for name in names if all(os.path.isfile(output_path(save, kind, name)) for kind in KINDS)}


def check_predict_config(config):
    """The flags predict mode needs, each missing or wrong one a one-line ``UserError``."""
    if not config.restore_from:
        raise UserError("--mode predict needs --restore-from: the weights to predict with")
    if not os.path.exists(config.restore_from):
        raise UserError(f"--restore-from: weight file or folder of label maps not found: {config.restore_from}")
    save = config.evaluation.save_predictions
    if not save:
        raise UserError("--mode predict needs --save-predictions: the folder to write the predictions to")
    if os.path.exists(save) and not os.path.isdir(save):
        raise UserError(f"--save-predictions {save} is a file; the predictions go to a folder")
    check_outside_images(save, "--save-predictions", config.data.target().images)


def predict_dataset(config):
    """The split's images at the input size, no labels; each image's original size from its header."""
    d = config.data
    dataset = TargetDataset(d.target(), d.val_split, input_size=config.network.input_size, labels=False,
                            list_root=d.lists, num_classes=config.network.num_classes,
                            resize_backend=d.resize_backend)
    sizes = []
    for image_path, _, _ in dataset.samples:
        shape = stored_shape(image_path)
        if shape is None:
            raise UserError(f"cannot read image (not an image file): {image_path}")
        sizes.append(shape)
    return dataset, sizes


class ImagePredictionModule(PredictionModule):
    """The network for ``Trainer.predict``: a step returns each image's train ids at its original
    size (``sizes[index]``), from the logits upsampled as evaluation upsamples them."""

    def __init__(self, net, sizes, flip=False, scales=(1.0,), fold_bn=True, source="the network"):
        super().__init__(net, flip=flip, scales=scales, fold_bn=fold_bn, source=source)
        self.sizes = list(sizes)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        # One scale: the network's output, upsampled once, as evaluation does; several: their mean at the input size.
        logits = multiscale_logits(self.net, batch["image"], self.scales, self.flip)
        check_finite(logits, batch["name"], self.source)
        indices = batch["index"].tolist()
        labels = [upsampled_argmax(logits[i], self.sizes[index]).to(torch.uint8).cpu() for i, index in enumerate(indices)]
        return {"name": list(batch["name"]), "label": labels, "index": indices}


class PredictionFiles(FileWriter):
    """Writes each image's train ids, colours and picture, atomically, the picture last (on writer
    threads, ``modules/prediction.py``'s :class:`FileWriter`)."""

    def __init__(self, save, image_paths, num_classes):
        super().__init__()
        self.save, self.image_paths, self.num_classes = save, image_paths, num_classes

    def write_batch(self, prediction, batch):
        for name, label, index in zip(prediction["name"], prediction["label"], prediction["index"]):
            train_ids = label.numpy()
            color = colorize(train_ids)
            write_png(output_path(self.save, "train_ids", name), train_ids)
            write_rgb_png(output_path(self.save, "color", name), color)
            image = read_image_bgr(self.image_paths[index])[:, :, ::-1]
            height, width = image.shape[:2]
            if width > PICTURE_WIDTH:
                image = cv2.resize(image, (PICTURE_WIDTH, max(1, round(height * PICTURE_WIDTH / width))),
                                   interpolation=cv2.INTER_AREA)
            picture = labelled_picture([(image, [train_ids])], ["image", "prediction"], self.num_classes)
            write_rgb_png(output_path(self.save, "pictures", name), picture)


def settings_of(config):
    """What decides the predictions: a rerun into the same folder must use the same."""
    n = config.network
    return {"arch": n.arch, "num_classes": n.num_classes, "head_branches": n.head_branches,
            "input_size": list(n.input_size), "resize_backend": config.data.resize_backend,
            "flip": config.evaluation.flip_when_test, "scales": list(config.evaluation.scales), "precision": config.hardware.precision,
            # only when off, so that the folders of earlier runs resume as they are
            **({} if config.hardware.fold_bn else {"fold_bn": False}),
            "weights": fingerprint([config.restore_from], names=[""])}


def predict(config):
    """Predict every image of the split into ``--save-predictions`` (resuming an earlier run);
    returns ``{"save", "images", "predicted", "skipped"}``."""
    check_predict_config(config)
    save = config.evaluation.save_predictions
    dataset, sizes = predict_dataset(config)
    names = dataset.names
    label_maps = os.path.isdir(config.restore_from)  # a black box known by its label maps: nothing to run
    if label_maps:
        label_map_box.check_flags(config)
        maps = label_map_box.label_map_paths(config.restore_from, names, config.data.val_split,
                                             config.data.target().pseudo_label_suffix)
        for inner, outer, how in ((config.restore_from, save, "holds"), (save, config.restore_from, "is inside")):
            if is_within(inner, outer):
                raise UserError(f"--save-predictions {save} {how} the label maps of --restore-from "
                                f"{config.restore_from}: choose a folder apart from them")
    else:
        from modules.base import SegmentationModule  # the network as every stage builds it

        net = SegmentationModule(config).net
    with folder_lock(save, "--save-predictions"):
        claim_folder(os.path.join(save, STATE), label_map_box.settings(maps) if label_maps else settings_of(config),
                     config.evaluation.overwrite,
                     outputs=[os.path.join(save, kind) for kind in KINDS], flag="--save-predictions")
        done = frozenset() if config.evaluation.overwrite else frozenset(done_names(save, names))
        if label_maps:
            writer = PredictionFiles(save, [path for path, _, _ in dataset.samples], config.network.num_classes)
            for prediction in progress(label_map_box.predictions(maps, names, sizes, config.network.num_classes, done),
                                       total=len(names) - len(done), desc="predict: label maps", unit="image"):
                writer.write_batch(prediction, None)
        elif len(done) < len(names):
            module = ImagePredictionModule(net, sizes, flip=config.evaluation.flip_when_test,
                                           scales=config.evaluation.scales, fold_bn=config.hardware.fold_bn,
                                           source=config.restore_from)
            data = PredictionData(dataset, names, config.data.test_batch_size, config.data.num_workers, done)
            writer = PredictionFiles(save, [path for path, _, _ in dataset.samples], config.network.num_classes)
            run_predict(module, data, writer, config.hardware)
    print(f"predictions of {len(names)} images in {save} ({len(done)} done before; train_ids/, color/, pictures/)")
    return {"save": save, "images": len(names), "predicted": len(names) - len(done), "skipped": len(done)}
