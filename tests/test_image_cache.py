"""--image-cache: resized images read back from disk, identical to decoding, invalidated by a changed file
or another resize backend."""
import os
import shutil

import cv2
import numpy as np
import pytest
import torch

import datasets.base as transforms
from datasets.cityscapes import CityscapesDataset
from main import parse_args
from modules.data import SegmentationDataModule
from datasets.pixels import to_network_input
from tests.fixtures import make_cityscapes, pil_resized_bgr
from utils.cli import UserError
from utils.image_cache import ResizedImageCache


@pytest.fixture
def tree(tmp_path):
    return make_cityscapes(str(tmp_path / "cs"), train=3, val=2, size=(64, 32))


def _dataset(tree, cache_root=None, resize_backend="pil"):
    data = CityscapesDataset(tree["image_root"], "val", input_size=(32, 16), label_root=tree["label_root"],
                             resize_label=False, resize_backend=resize_backend)
    if cache_root is not None:
        data.image_cache = ResizedImageCache(cache_root)
    return data


def _entries(root):
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files)


def test_cached_items_equal_decoded_items_and_skip_decoding(tree, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    plain, cached = _dataset(tree), _dataset(tree, cache)
    first = [cached[i] for i in range(len(cached))]
    assert len(_entries(cache)) == len(cached)
    for i, item in enumerate(first):
        reference = plain[i]
        assert torch.equal(item["image"], reference["image"]) and torch.equal(item["label"], reference["label"])

    def no_decoding(path):
        raise AssertionError(f"decoded {path} although it is cached")

    monkeypatch.setattr(transforms, "read_image_bgr", no_decoding)
    again = _dataset(tree, cache)  # a new dataset (another worker or run) finds the entries
    for i, item in enumerate(first):
        assert torch.equal(again[i]["image"], item["image"])
    # labels are still checked against the original image size, which the entry keeps
    assert again[0]["label"].shape == (32, 64)


def test_changed_image_or_input_size_is_read_again(tree, tmp_path):
    cache = str(tmp_path / "cache")
    data = _dataset(tree, cache)
    before = data[0]["image"]
    path = data.samples[0][0]
    image = cv2.imread(path)
    cv2.imwrite(path, 255 - image)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a visibly newer file
    after = data[0]["image"]
    assert not torch.equal(before, after)
    assert torch.equal(after, _dataset(tree)[0]["image"])
    other_size = CityscapesDataset(tree["image_root"], "val", input_size=(16, 8))
    other_size.image_cache = ResizedImageCache(cache)
    assert other_size[0]["image"].shape == (3, 8, 16)


def test_an_entry_of_one_resize_backend_is_never_served_to_the_other(tree, tmp_path):
    cache = str(tmp_path / "cache")
    path = _dataset(tree).samples[0][0]
    keys = ResizedImageCache(cache)
    assert keys.entry_path(path, (32, 16), "pil") != keys.entry_path(path, (32, 16), "cv2")
    image = cv2.imread(path)
    expected = {"pil": pil_resized_bgr(image, (32, 16)),
                "cv2": cv2.resize(image, (32, 16), interpolation=cv2.INTER_CUBIC)}
    assert not np.array_equal(expected["pil"], expected["cv2"])
    for first, second in (("pil", "cv2"), ("cv2", "pil")):
        shutil.rmtree(cache, ignore_errors=True)
        for backend in (first, second, first):  # each filled, then each read back from its own entry
            item = _dataset(tree, cache, backend)[0]
            assert torch.equal(item["image"], to_network_input(expected[backend]))
        assert len(_entries(cache)) == 2


def test_damaged_entry_is_rebuilt(tree, tmp_path):
    cache = str(tmp_path / "cache")
    data = _dataset(tree, cache)
    reference = data[1]["image"]
    entry = data.image_cache.entry_path(data.samples[1][0], data.input_size, data.resize_backend)
    with open(entry, "wb") as f:
        f.write(b"truncated")
    assert torch.equal(data[1]["image"], reference)
    with np.load(entry) as rebuilt:
        assert rebuilt["image"].shape == (16, 32, 3)


def test_missing_image_is_the_usual_one_line_error(tree, tmp_path):
    data = _dataset(tree, str(tmp_path / "cache"))
    os.remove(data.samples[0][0])
    with pytest.raises(UserError, match="image not found"):
        data[0]


def test_flag_reaches_every_dataset_of_the_data_module(tree, tmp_path):
    cache = str(tmp_path / "cache")
    args = parse_args(["--module-name", "basic", "--mode", "train", "--image-root", tree["image_root"],
                       "--label-root", tree["label_root"], "--input-size", "32x16", "--image-cache", cache])
    data = SegmentationDataModule(args, "labels")
    data.check("fit")
    for name in ("train", "eval"):
        dataset = data._dataset(name)
        assert isinstance(dataset.image_cache, ResizedImageCache) and dataset.image_cache.root == cache
        dataset[0]
    assert len(_entries(cache)) == 2
    no_cache = SegmentationDataModule(parse_args(["--module-name", "basic", "--image-root", tree["image_root"],
                                                  "--label-root", tree["label_root"]]), "labels")
    assert no_cache._dataset("eval").image_cache is None


# -- the default: <log-tb-dir>/cache where the disk has room ---------------------------------------------

def _run_data(tree, tmp_path, *flags):
    """The data module of a training run, set up as the Trainer sets it up."""
    args = parse_args(["--module-name", "basic", "--mode", "train", "--image-root", tree["image_root"],
                       "--label-root", tree["label_root"], "--input-size", "32x16", "--train-batch-size", "2",
                       "--log-tb-dir", str(tmp_path / "exp"), *flags])
    data = SegmentationDataModule(args, "labels")
    data.setup("fit")
    return data


def test_the_default_cache_lives_in_the_experiment_root(tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    data = _run_data(tree, tmp_path)
    cache = str(tmp_path / "exp" / "cache")
    for name in ("train", "eval"):
        dataset = data._dataset(name)
        assert dataset.image_cache.root == cache
        dataset[0]
    assert len(_entries(cache)) == 2
    assert sorted(os.listdir(tmp_path)) == ["cs", "exp"]
    assert SegmentationDataModule(parse_args(["--module-name", "basic", "--image-root", tree["image_root"],
                                              "--label-root", tree["label_root"]]),
                                  "labels")._dataset("eval").image_cache is None  # outside a run: none


def test_the_default_cache_is_off_when_the_disk_is_short(tree, tmp_path, monkeypatch, caplog):
    import utils.image_cache

    gib = 1 << 30
    disk = shutil._ntuple_diskusage(total=100 * gib, used=99 * gib, free=gib)  # 1 GiB free, less than the margin
    monkeypatch.setattr(utils.image_cache.shutil, "disk_usage", lambda path: disk)
    with caplog.at_level("INFO", logger="pytorch_lightning.utilities.rank_zero"):
        data = _run_data(tree, tmp_path)
    assert data._dataset("train").image_cache is None and data._dataset("eval").image_cache is None
    lines = [r.getMessage() for r in caplog.records if "image cache off" in r.getMessage()]
    assert len(lines) == 2 and all("1.1 GB free" in line and "margin" in line for line in lines), lines
    data._dataset("eval")[0]
    assert not os.path.exists(tmp_path / "exp" / "cache")


def test_room_is_needed_only_for_the_images_not_cached_yet(tree, tmp_path, monkeypatch):
    import utils.image_cache

    cache = ResizedImageCache(str(tmp_path / "deep" / "cache"))  # not made yet: its parent's disk counts
    data = _dataset(tree, cache.root)
    paths = [image for image, _, _ in data.samples]
    assert cache.room_for(paths, (32, 16), "pil") == (2, None)
    data[0]
    monkeypatch.setattr(utils.image_cache.shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(total=10 << 30, used=10 << 30, free=0))
    missing, reason = cache.room_for(paths, (32, 16), "pil")
    assert missing == 1 and "1 images need" in reason
    data[1]
    assert cache.room_for(paths, (32, 16), "pil") == (0, None)
    assert cache.room_for(paths, (16, 8), "pil")[0] == 2  # another input size: other entries


def test_off_and_a_named_folder(tree, tmp_path):
    off = _run_data(tree, tmp_path, "--image-cache", "off")
    assert off._dataset("train").image_cache is None and off._dataset("eval").image_cache is None
    named = _run_data(tree, tmp_path, "--image-cache", str(tmp_path / "mine"))
    assert named._dataset("eval").image_cache.root == str(tmp_path / "mine")


def test_an_entry_that_cannot_be_stored_is_skipped_once(tree, tmp_path, capsys):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    data = _dataset(tree, str(blocker))
    plain = _dataset(tree)
    for i in range(len(data)):
        assert torch.equal(data[i]["image"], plain[i]["image"])
    err = capsys.readouterr().err
    assert err.count("image cache: cannot store entries") == 1 and str(blocker) in err
    assert not data.image_cache.storing


def test_a_name_that_is_not_utf8_is_cached(tmp_path):
    """A file name os.listdir gives with a surrogate escape (bytes that are not UTF-8) has an entry too."""
    image = np.random.default_rng(0).integers(0, 255, (16, 32, 3), np.uint8)
    path = os.path.join(str(tmp_path), os.fsdecode(b"caf\xe9.png"))
    with open(path, "wb") as f:
        f.write(cv2.imencode(".png", image)[1].tobytes())
    cache = ResizedImageCache(str(tmp_path / "cache"))
    read = lambda p: (image[:8, :16], (16, 32))  # noqa: E731 (the decoder, stubbed)
    first = cache.load(path, (16, 8), "pil", read)
    assert len(_entries(str(tmp_path / "cache"))) == 1
    again = cache.load(path, (16, 8), "pil", lambda p: pytest.fail("read again although cached"))
    assert np.array_equal(first[0], again[0]) and tuple(again[1]) == (16, 32)
