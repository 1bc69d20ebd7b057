"""The synthetic two-domain benchmark: real layouts, determinism, label ids, class coverage, a
street layout, a real appearance gap, the command line, and that the real loaders read it."""
import glob
import hashlib
import json
import os

import numpy as np
import pytest
from cityscapesscripts.helpers.labels import labels as cityscapes_labels

from tools import synthetic
from tools.synthetic import ID, generate_benchmark, main, render_scene
from utils.cli import UserError, run
from utils.io import read_image_bgr, read_label
from utils.labels import IGNORE_INDEX, NUM_CLASSES, cityscapes_label_id_lut

SIZE = (128, 64)
COUNTS = dict(num_source=40, num_train=40, num_val=4)
LUT = cityscapes_label_id_lut()


def files_under(root):
    return sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "**", "*"), recursive=True)
                  if os.path.isfile(p))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    generate_benchmark(root, seed=0, size=SIZE, workers=0, progress=False, **COUNTS)
    return root


def read_split(root, domain):
    if domain == "source":
        pairs = zip(sorted(glob.glob(f"{root}/gta5/images/*.png")), sorted(glob.glob(f"{root}/gta5/labels/*.png")))
    else:
        images = sorted(glob.glob(f"{root}/cityscapes/leftImg8bit/{domain}/*/*.png"))
        pairs = [(p, p.replace("leftImg8bit", "gtFine").replace("_gtFine.png", "_gtFine_labelIds.png"))
                 for p in images]
    return [(read_image_bgr(i), read_label(l)) for i, l in pairs]


def test_layout_and_names_are_those_of_gta5_and_cityscapes(bench):
    expected = ["synthetic.json"]
    expected += [f"gta5/{kind}/{k:05d}.png" for kind in ("images", "labels") for k in range(1, 41)]
    for split, cities, count in (("train", ("aachen", "bochum"), 40), ("val", ("frankfurt", "lindau"), 4)):
        for city in cities:
            for seq in range(count // 2):
                stem = f"{city}/{city}_{seq:06d}_000019"
                expected.append(f"cityscapes/leftImg8bit/{split}/{stem}_leftImg8bit.png")
                expected.append(f"cityscapes/gtFine/{split}/{stem}_gtFine_labelIds.png")
    assert files_under(bench) == sorted(expected)  # nothing else, no temporary files left behind
    image, label = read_split(bench, "val")[0]
    assert image.shape == (SIZE[1], SIZE[0], 3) and image.dtype == np.uint8
    assert label.shape == (SIZE[1], SIZE[0]) and label.dtype == np.uint8


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(tmp_path):
    small = dict(num_source=4, num_train=4, num_val=2, size=(64, 32), progress=False)
    roots = [str(tmp_path / name) for name in ("a", "b", "c")]
    generate_benchmark(roots[0], seed=3, workers=0, **small)
    generate_benchmark(roots[1], seed=3, workers=2, **small)
    generate_benchmark(roots[2], seed=4, workers=0, **small)
    names = files_under(roots[0])
    assert names == files_under(roots[1]) == files_under(roots[2])
    for name in names:
        with open(os.path.join(roots[0], name), "rb") as a, open(os.path.join(roots[1], name), "rb") as b:
            assert a.read() == b.read(), name
    for name in names:
        if name.endswith(".png"):
            with open(os.path.join(roots[0], name), "rb") as a, open(os.path.join(roots[2], name), "rb") as c:
                assert a.read() != c.read(), name


def test_label_ids_are_cityscapes_ids_with_void_ids(bench):
    valid = {l.id for l in cityscapes_labels if l.id >= 0}
    for domain in ("source", "train", "val"):
        ids = set(np.unique(np.concatenate([l.ravel() for _, l in read_split(bench, domain)])).tolist())
        assert ids <= valid, (domain, ids - valid)
        assert any(LUT[i] == IGNORE_INDEX for i in ids), domain
    for _, label in read_split(bench, "train"):
        assert (label[-1] == ID["out of roi"]).all() and (label[-3:] == ID["ego vehicle"]).any()


@pytest.mark.parametrize("domain", ["source", "train"])
def test_every_train_class_occurs(bench, domain):
    present = set()
    for _, label in read_split(bench, domain):
        present |= set(np.unique(LUT[label]).tolist())
    assert present - {IGNORE_INDEX} == set(range(NUM_CLASSES))


def test_forced_class_is_in_its_image():
    for k, name in enumerate(synthetic.FORCED):
        _, label = render_scene(np.random.default_rng([9, 1, k]), (64, 32), "target", 0.6, name)
        assert (label == ID[name]).any(), name


def test_street_layout_sky_on_top_road_at_the_bottom(bench):
    labels = np.stack([l for _, l in read_split(bench, "source") + read_split(bench, "train")])
    half = labels.shape[1] // 2
    for name, top_share in (("sky", (0.95, 1.0)), ("road", (0.0, 0.05))):
        mask = labels == ID[name]
        share = mask[:, :half].sum() / mask.sum()
        assert top_share[0] <= share <= top_share[1], (name, share)


def mean_colour(pairs, label_id):
    pixels = np.concatenate([image[label == label_id] for image, label in pairs])
    return pixels.astype(np.float64).mean(0)


def test_domains_differ_in_appearance_and_the_gap_is_a_parameter(bench):
    road = ID["road"]
    source, target = mean_colour(read_split(bench, "source"), road), mean_colour(read_split(bench, "train"), road)
    assert np.linalg.norm(source - target) > 15

    def target_road(gap):
        pairs = [render_scene(np.random.default_rng([1, 1, k]), (64, 32), "target", gap) for k in range(12)]
        return np.linalg.norm(mean_colour(pairs, road) - source)

    distances = [target_road(gap) for gap in (0.0, 0.5, 1.0)]
    assert distances == sorted(distances) and distances[0] < distances[2] / 3


def test_rerun_keeps_files_and_other_settings_need_overwrite(tmp_path):
    root, small = str(tmp_path / "bench"), dict(num_source=3, num_train=2, num_val=1, size=(64, 32), progress=False)
    generate_benchmark(root, workers=0, **small)
    first = os.path.join(root, "gta5", "images", "00001.png")
    second = os.path.join(root, "gta5", "images", "00002.png")
    with open(first, "rb") as f:
        content = f.read()
    stamps = os.stat(first).st_mtime_ns, os.stat(second).st_mtime_ns
    generate_benchmark(root, workers=0, **small)
    assert (os.stat(first).st_mtime_ns, os.stat(second).st_mtime_ns) == stamps
    os.remove(first)  # an interrupted run resumes: only the missing file is drawn again, identically
    generate_benchmark(root, workers=0, **small)
    with open(first, "rb") as f:
        assert f.read() == content
    assert os.stat(second).st_mtime_ns == stamps[1]
    with pytest.raises(UserError, match="--overwrite"):
        generate_benchmark(root, workers=0, **dict(small, num_source=2))
    generate_benchmark(root, workers=0, overwrite=True, **dict(small, num_source=2))
    assert sorted(os.listdir(os.path.join(root, "gta5", "images"))) == ["00001.png", "00002.png"]


def test_foreign_data_in_root_is_never_touched(tmp_path):
    os.makedirs(tmp_path / "cityscapes" / "gtFine")
    (tmp_path / "cityscapes" / "gtFine" / "real.png").write_bytes(b"x")
    with pytest.raises(UserError, match="did not write"):
        generate_benchmark(str(tmp_path), num_source=1, num_train=1, num_val=1, size=(64, 32), workers=0,
                           overwrite=True, progress=False)
    assert (tmp_path / "cityscapes" / "gtFine" / "real.png").exists()
    # a manifest that is JSON but not ours, even with --overwrite: one line, nothing removed
    for text in ("[1, 2]", "null", '{"settings": 5}', "{not json"):
        (tmp_path / "synthetic.json").write_text(text)
        for overwrite in (False, True):
            with pytest.raises(UserError, match="unreadable .*synthetic.json; delete it or choose another --root"):
                generate_benchmark(str(tmp_path), num_source=1, num_train=1, num_val=1, size=(64, 32), workers=0,
                                   overwrite=overwrite, progress=False)
        assert (tmp_path / "cityscapes" / "gtFine" / "real.png").exists()


def test_cli_summary_rerun_and_bad_flags(tmp_path, capsys):
    argv = ["--root", str(tmp_path), "--num-source", "13", "--num-train", "13", "--num-val", "2", "--size", "64x32",
            "--workers", "0"]
    for _ in range(2):  # the second run finds the benchmark complete and only reports
        with pytest.raises(SystemExit) as exit_:
            run(main, argv)
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert "class pixel shares" in out and "traffic light" in out and "target_train" in out
    for bad in (["--size", "64by32"], ["--size", "8x4"], ["--num-val", "0"], ["--domain-gap", "1.5"]):
        with pytest.raises(SystemExit) as exit_:
            run(main, argv + bad)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert bad[0] in err


def test_help_explains_every_flag():
    text = synthetic.build_parser().format_help()
    for flag in ("--root", "--seed", "--num-source", "--num-train", "--num-val", "--num-test", "--size",
                 "--domain-gap", "--workers", "--overwrite"):
        assert flag in text


def test_the_real_loaders_read_it(bench, tmp_path):
    from datasets.cityscapes import CityscapesDataset
    from datasets.source import GTA5Dataset
    from utils import transfer_trainid

    source = GTA5Dataset(os.path.join(bench, "gta5"), input_size=SIZE)
    assert len(source) == 40
    assert set(np.unique(source[0]["label"].numpy())) <= set(range(NUM_CLASSES)) | {IGNORE_INDEX}
    gtfine2 = str(tmp_path / "gtFine2")
    with pytest.raises(SystemExit) as exit_:
        run(transfer_trainid.main, ["--ori-label-root", os.path.join(bench, "cityscapes", "gtFine"),
                                    "--dst-label-root", gtfine2, "--workers", "1"])
    assert exit_.value.code == 0
    images = os.path.join(bench, "cityscapes", "leftImg8bit")
    val = CityscapesDataset(images, "val", input_size=SIZE, label_root=gtfine2, resize_label=False)
    assert val.names[0] == "frankfurt/frankfurt_000000_000019" and len(val) == 4
    label = val[0]["label"].numpy()
    assert (label[-1] == IGNORE_INDEX).all() and set(np.unique(label)) - {IGNORE_INDEX} <= set(range(NUM_CLASSES))
    assert len(CityscapesDataset(images, "train", input_size=SIZE)) == 40


# -- --target: the same target domain in the layouts of ACDC, Dark Zurich and a folder of images ------------

TARGET_COUNTS = dict(num_source=1, num_train=8, num_val=2)


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    roots = {}
    for target in synthetic.TARGETS:
        roots[target] = str(tmp_path_factory.mktemp(target))
        generate_benchmark(roots[target], seed=0, size=SIZE, workers=0, progress=False, target=target, **TARGET_COUNTS)
    return roots


def target_frames(root, target):
    """``(split, condition, image, label or None)`` of every target image, in the order drawn."""
    jobs = synthetic.plan_files(root, TARGET_COUNTS["num_source"], TARGET_COUNTS["num_train"],
                                TARGET_COUNTS["num_val"], target)
    return [("train" if job[1] == 1 else "val", job[5], read_image_bgr(job[3]), read_label(job[4]) if job[4] else None)
            for job in jobs if job[0] == "target"]


def test_acdc_layout_fog_and_night_with_train_ids(targets):
    root = targets["acdc"]
    expected = ["synthetic.json", "gta5/images/00001.png", "gta5/labels/00001.png"]
    for condition, number in (("fog", 300), ("night", 400)):
        frames = [("train", f"GOPR0{number + q}", n) for q in range(2) for n in range(2)]
        frames.append(("val", f"GOPR0{number + 10}", 0))
        for split, sequence, n in frames:
            stem = f"{condition}/{split}/{sequence}/{sequence}_frame_{n:06d}"
            expected += [f"acdc/rgb_anon/{stem}_rgb_anon.png", f"acdc/gt/{stem}_gt_labelTrainIds.png"]
    assert files_under(root) == sorted(expected)
    for _, _, image, label in target_frames(root, "acdc"):
        assert image.shape == (SIZE[1], SIZE[0], 3) and label.shape == (SIZE[1], SIZE[0])
        assert set(np.unique(label).tolist()) <= set(range(NUM_CLASSES)) | {IGNORE_INDEX}
        assert (label[-1] == IGNORE_INDEX).all()  # out of roi, a void id: ignored as train id


def test_darkzurich_layout_labels_for_val_night_only(targets):
    root = targets["darkzurich"]
    names = files_under(os.path.join(root, "darkzurich"))
    images = [n for n in names if n.startswith("rgb_anon/")]
    assert {n.split("/")[2] for n in images if n.split("/")[1] == "train"} == {"day", "twilight", "night"}
    assert {n.split("/")[1:3] == ["val", "night"] for n in images if n.split("/")[1] == "val"} == {True}
    assert len(images) == 10 and all(n.endswith("_rgb_anon.png") for n in images)
    labels = [n for n in names if n.startswith("gt/")]
    assert labels == sorted(n.replace("rgb_anon/", "gt/", 1).replace("_rgb_anon.png", "_gt_labelTrainIds.png")
                            for n in images if n.startswith("rgb_anon/val/"))


def test_folder_layout_png_and_jpeg_with_mirrored_labels(targets):
    root = os.path.join(targets["folder"], "folder")
    images = files_under(os.path.join(root, "images"))
    assert [n for n in images if n.endswith(".jpg")] and [n for n in images if n.endswith(".png")]
    assert {n.split("/")[0] for n in images} == {"train", "val"} and any(n.count("/") == 3 for n in images)
    assert files_under(os.path.join(root, "labels")) == sorted(os.path.splitext(n)[0] + ".png" for n in images)


def test_every_target_draws_the_cityscapes_scenes(targets):
    """The same seed, split and index give the same scene in every layout: labels equal to the
    Cityscapes target's (as train ids), and the daytime images equal (a JPEG close to it)."""
    day = target_frames(targets["cityscapes"], "cityscapes")
    for target in ("acdc", "darkzurich", "folder"):
        frames = target_frames(targets[target], target)
        assert [f[0] for f in frames] == [d[0] for d in day]
        for (_, condition, image, label), (_, _, day_image, day_label) in zip(frames, day):
            if label is not None:
                assert (label == LUT[day_label]).all(), target
            if condition == "day":
                difference = np.abs(image.astype(np.int16) - day_image).mean()
                assert difference < 8 if target == "folder" else difference == 0, (target, difference)


def test_conditions_look_like_fog_night_and_twilight(targets):
    day = {i: image.astype(np.float64) for i, (_, _, image, _) in enumerate(target_frames(targets["cityscapes"],
                                                                                          "cityscapes"))}
    looks = {}
    for target in ("acdc", "darkzurich"):
        for i, (_, condition, image, _) in enumerate(target_frames(targets[target], target)):
            if condition != "day":
                looks.setdefault(condition, []).append((image.astype(np.float64), day[i]))

    def mean(condition, measure):
        return np.mean([measure(image) / measure(reference) for image, reference in looks[condition]])

    def brightness(image):
        return image.mean()

    def blue_over_red(image):
        return image[..., 0].mean() / image[..., 2].mean()

    third = SIZE[1] // 3
    # Night: dark, blue-ish, with light sources (a few near-white pixels in a dark frame).
    assert mean("night", brightness) < 0.5 and mean("night", blue_over_red) > 1.15
    assert all(np.percentile(image.max(2), 99.9) > 150 for image, _ in looks["night"])
    # Fog: contrast falls towards the top (the far street, the sky) more than at the bottom; lighter overall.
    top = mean("fog", lambda image: image[:third].std())
    bottom = mean("fog", lambda image: image[-third:].std())
    assert top < 0.6 and top < bottom and mean("fog", brightness) > 1.0
    # Twilight: dimmer than day, brighter than night, warmer.
    assert mean("night", brightness) < mean("twilight", brightness) < 0.85
    assert mean("twilight", blue_over_red) < 0.9


@pytest.mark.parametrize("condition", sorted(synthetic.CONDITION_RENDERINGS))
def test_a_condition_is_a_pure_function_of_image_and_stream(condition):
    image, _ = render_scene(np.random.default_rng(0), (64, 32), "target")
    before = image.copy()
    render = synthetic.CONDITION_RENDERINGS[condition]
    first = render(image, np.random.default_rng(5))
    assert (image == before).all() and first.shape == image.shape and first.dtype == np.uint8
    assert (render(image, np.random.default_rng(5)) == first).all()
    assert not (render(image, np.random.default_rng(6)) == first).all()


def test_darkzurich_is_identical_whatever_the_worker_count(tmp_path):
    small = dict(num_source=1, num_train=3, num_val=1, size=(64, 32), progress=False, target="darkzurich")
    generate_benchmark(str(tmp_path / "a"), workers=0, **small)
    generate_benchmark(str(tmp_path / "b"), workers=2, **small)
    names = files_under(str(tmp_path / "a"))
    assert names == files_under(str(tmp_path / "b")) and len(names) == 8
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_another_target_in_the_same_root_needs_overwrite(tmp_path):
    root, small = str(tmp_path / "bench"), dict(num_source=1, num_train=2, num_val=2, size=(64, 32), progress=False)
    generate_benchmark(root, workers=0, **small)
    with open(os.path.join(root, "synthetic.json")) as f:
        assert "target" not in json.load(f)["settings"]  # the manifest written before --target existed
    with pytest.raises(synthetic.OtherSettings, match="--overwrite"):
        generate_benchmark(root, workers=0, target="acdc", **small)
    manifest = generate_benchmark(root, workers=0, target="acdc", overwrite=True, **small)
    assert manifest["settings"]["target"] == "acdc" and manifest["complete"]
    assert sorted(os.listdir(root)) == ["acdc", "gta5", "synthetic.json"]  # the Cityscapes tree went with it
    assert generate_benchmark(root, workers=0, target="acdc", **small) == manifest  # complete: only re-read
    os.remove(os.path.join(root, "acdc", "rgb_anon", "night", "val", "GOPR0410", "GOPR0410_frame_000000_rgb_anon.png"))
    assert generate_benchmark(root, workers=0, target="acdc", **small)["pixel_shares"] == manifest["pixel_shares"]


def test_foreign_data_in_the_target_folder_is_never_touched(tmp_path):
    small = dict(num_source=1, num_train=2, num_val=2, size=(64, 32), workers=0, progress=False)
    generate_benchmark(str(tmp_path), **small)
    real = tmp_path / "acdc" / "gt" / "real.png"
    os.makedirs(real.parent)
    real.write_bytes(b"x")
    with pytest.raises(UserError, match="did not write"):
        generate_benchmark(str(tmp_path), target="acdc", overwrite=True, **small)
    assert real.exists()


@pytest.mark.parametrize("target, flag, count", [("acdc", "--num-val", 1), ("darkzurich", "--num-train", 2)])
def test_too_few_images_for_every_condition(tmp_path, target, flag, count):
    counts = dict(dict(num_source=1, num_train=4, num_val=2), **{flag[2:].replace("-", "_"): count})
    with pytest.raises(UserError, match=flag):
        generate_benchmark(str(tmp_path / "b"), size=(64, 32), workers=0, progress=False, target=target, **counts)
    assert not (tmp_path / "b").exists()


def test_cli_target_prints_the_flags_that_read_it(tmp_path, capsys):
    assert "--target" in synthetic.build_parser().format_help()
    argv = ["--root", str(tmp_path), "--num-source", "1", "--num-train", "2", "--num-val", "2", "--size", "64x32",
            "--workers", "0", "--target", "acdc"]
    with pytest.raises(SystemExit) as exit_:
        run(main, argv)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"--target-dataset acdc --data-dir {tmp_path / 'acdc'} --conditions fog,night" in out
    with pytest.raises(SystemExit) as exit_:
        run(main, argv[:-1] + ["kitti"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and "--target" in err


def test_target_args_read_what_was_written(targets):
    from datasets.base import TargetDataset
    from datasets.targets import make_target

    for target in ("acdc", "darkzurich", "folder"):
        args = synthetic.target_args(targets[target], target)
        flags = dict(zip(args[::2], args[1::2]))
        layout = make_target(target, flags["--data-dir"], label_root=flags.get("--label-dir"),
                             conditions=tuple(flags["--conditions"].split(",")) if "--conditions" in flags else None)
        val = TargetDataset(layout, "val", input_size=SIZE, labels=True, resize_label=False)
        train = TargetDataset(layout, "train", input_size=SIZE, labels=target != "darkzurich")
        assert len(val) == TARGET_COUNTS["num_val"] and len(train) == TARGET_COUNTS["num_train"]
        assert set(np.unique(val[0]["label"].numpy())) <= set(range(NUM_CLASSES)) | {IGNORE_INDEX}
    assert "--label-dir" not in synthetic.target_args(targets["folder"], "folder", labels=False)


# -- --num-test: a labelled test split, held out from model selection, in every layout ---------------------

TEST_COUNTS = dict(num_source=1, num_train=3, num_val=2, size=(64, 32), workers=0, progress=False)


@pytest.fixture(scope="module")
def with_test(tmp_path_factory):
    """``{target: (root without a test split, root with 2 test images)}``."""
    roots = {}
    for target in synthetic.TARGETS:
        roots[target] = tuple(str(tmp_path_factory.mktemp(f"{target}_{n}")) for n in (0, 2))
        for root, num_test in zip(roots[target], (0, 2)):
            generate_benchmark(root, target=target, num_test=num_test, **TEST_COUNTS)
    return roots


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_num_test_leaves_train_val_and_the_manifest_as_they_were(with_test):
    for target, (plain, tested) in with_test.items():
        names = files_under(plain)
        added = sorted(set(files_under(tested)) - set(names))
        assert len(added) == 4 and all("/test/" in n for n in added), (target, added)
        assert {n: digest(os.path.join(plain, n)) for n in names if n != "synthetic.json"} == \
            {n: digest(os.path.join(tested, n)) for n in names if n != "synthetic.json"}, target
        with open(os.path.join(plain, "synthetic.json")) as f:
            manifest = json.load(f)
        assert "num_test" not in manifest["settings"]
        assert list(manifest["pixel_shares"]) == ["source", "target_train", "target_val"]
        with open(os.path.join(tested, "synthetic.json")) as f:
            manifest = json.load(f)
        assert manifest["settings"]["num_test"] == 2 and "target_test" in manifest["pixel_shares"]
        # The test split has its own random stream (3): its first image is no copy of val's first.
        jobs = synthetic.plan_files(tested, 1, 3, 2, target, num_test=2)
        val, test = (next(job[3] for job in jobs if job[1] == stream) for stream in (2, 3))
        assert "/test/" in test and digest(val) != digest(test)


def test_the_readers_read_the_test_split_with_its_labels(with_test):
    from datasets.base import TargetDataset
    from datasets.targets import make_target
    from utils import transfer_trainid

    for target, (_, root) in with_test.items():
        if target == "cityscapes":  # label ids, converted into gtFine2 as stage 1 does: the test split too
            with pytest.raises(SystemExit) as exit_:
                run(transfer_trainid.main, ["--ori-label-root", os.path.join(root, "cityscapes", "gtFine"),
                                            "--dst-label-root", os.path.join(root, "cityscapes", "gtFine2"),
                                            "--workers", "1"])
            assert exit_.value.code == 0
        args = synthetic.target_args(root, target)
        flags = dict(zip(args[::2], args[1::2]))
        layout = make_target(target, flags["--data-dir"], label_root=flags.get("--label-dir"),
                             conditions=tuple(flags["--conditions"].split(",")) if "--conditions" in flags else None)
        test = TargetDataset(layout, "test", input_size=(64, 32), labels=True, resize_label=False)
        assert len(test) == 2, target
        for item in test:
            assert set(np.unique(item["label"].numpy())) <= set(range(NUM_CLASSES)) | {IGNORE_INDEX}
            assert (item["label"].numpy()[-1] == IGNORE_INDEX).all()  # out of roi
        if target == "cityscapes":
            assert {name.split("/")[0] for name in test.names} <= set(synthetic.TEST_CITIES)
        if target in ("acdc", "darkzurich"):
            assert {name.split("/")[0] for name in test.names} == set(synthetic.SPLIT_CONDITIONS[target]["val"])


def test_cli_num_test_in_the_summary_and_bad_counts(tmp_path, capsys):
    argv = ["--root", str(tmp_path / "b"), "--num-source", "1", "--num-train", "2", "--num-val", "2", "--size",
            "64x32", "--workers", "0", "--target", "acdc"]
    with pytest.raises(SystemExit) as exit_:
        run(main, argv + ["--num-test", "2"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "2 val, 2 test images" in out and "target_test" in out
    with pytest.raises(synthetic.OtherSettings, match="--overwrite"):  # a test split is another benchmark
        generate_benchmark(str(tmp_path / "b"), num_source=1, num_train=2, num_val=2, size=(64, 32), workers=0,
                           progress=False, target="acdc")
    for bad in ("-1", "1"):  # acdc: one fog and one night image at least
        with pytest.raises(SystemExit) as exit_:
            run(main, argv[:1] + [str(tmp_path / "c")] + argv[2:] + ["--num-test", bad])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith("error: ") and "--num-test" in err, err
    assert not (tmp_path / "c").exists()
