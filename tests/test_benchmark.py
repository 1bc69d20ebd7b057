"""tools/benchmark.py: one tiny CPU run of every stage in both configurations, and its flag checks."""
import json
import math

import pytest

from tools import benchmark
from utils.cli import UserError

FIGURES = ("images_per_s", "step_ms", "peak_mem_mb", "tflops")


def positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark") / "result.json"
    code = benchmark.main(["--accelerator", "cpu", "--arch", "deeplabv2_tiny", "--input-size", "64x32",
                           "--batch-size", "2", "--steps", "2", "--warmup", "1", "--num-workers", "0",
                           "--threads", "1", "--json", str(out)])
    assert code == 0
    return json.loads(out.read_text())


def test_report_holds_device_and_settings(report):
    device = report["device"]
    assert device["type"] == "cpu" and device["torch"] and device["name"] and device["cores"] >= 1
    settings = report["settings"]
    assert (settings["arch"], settings["input_size"], settings["batch_size"]) == ("deeplabv2_tiny", "64x32", 2)
    assert set(settings["configurations"]) == {"published", "fast"}
    assert "per-image loop" in settings["configurations"]["published"]
    assert "batched" in settings["configurations"]["fast"]
    assert positive(settings["png_mb"])


@pytest.mark.parametrize("stage", ["baseline", "smhm", "pseudo_label", "val"])
def test_every_model_stage_has_finite_positive_figures(report, stage):
    entry = report[stage]
    assert set(entry) == {"published", "fast", "speedup"}
    for config in ("published", "fast"):
        figures = entry[config]
        assert set(FIGURES) <= set(figures)
        assert positive(figures["images_per_s"]) and positive(figures["step_ms"])
        assert figures["peak_mem_mb"] is None or (math.isfinite(figures["peak_mem_mb"]) and figures["peak_mem_mb"] >= 0)
        # FLOPs are counted once per stage and apply to both configurations
        assert positive(figures["tflops"])
    assert entry["speedup"] == pytest.approx(entry["fast"]["images_per_s"] / entry["published"]["images_per_s"])


def test_inference_stages_report_the_model_alone_and_pseudo_label_writing(report):
    for stage in ("pseudo_label", "val"):
        for config in ("published", "fast"):
            assert positive(report[stage][config]["model_images_per_s"])
    writing = report["pseudo_label"]["fast"]["writing"]
    assert positive(writing["images_per_s"]) and writing["ms_per_image"] == pytest.approx(1000 / writing["images_per_s"])


def test_data_stage_measures_loaders_only(report):
    data = report["data"]
    for config in ("published", "fast"):
        assert positive(data[config]["images_per_s"]) and data[config]["tflops"] is None


def test_resize_stage_times_pil_against_opencv(report):
    resize = report["resize"]
    for config in ("published", "fast"):
        figures = resize[config]
        assert positive(figures["images_per_s"]) and positive(figures["label_ms"]) and figures["tflops"] is None
        assert figures["images_per_s"] == pytest.approx(1000 / figures["step_ms"])
    assert "pil resizing" in report["settings"]["configurations"]["published"]
    assert "cv2 resizing" in report["settings"]["configurations"]["fast"]
    assert "resize: one image (bicubic)" in benchmark.format_table(report)


def test_table_lists_every_stage(report):
    table = benchmark.format_table(report)
    for stage in benchmark.STAGES:
        assert any(line.startswith(stage) for line in table.splitlines())
    assert "speedup" in table and "published" in table


@pytest.mark.parametrize("argv, flag", [
    (["--stages", "baseline,train"], "--stages"),
    (["--steps", "0", "--accelerator", "cpu"], "--steps"),
    (["--batch-size", "1", "--stages", "smhm", "--accelerator", "cpu"], "--batch-size"),
    (["--input-size", "64"], "--input-size"),
])
def test_bad_flags_name_the_flag(argv, flag):
    with pytest.raises(UserError, match=flag):
        benchmark.main(argv)


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        benchmark.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--accelerator", "--arch", "--input-size", "--batch-size", "--steps", "--warmup", "--num-workers",
                 "--threads", "--stages", "--channels-last", "--autocast", "--compile", "--json"):
        assert flag in text


def test_students_are_measured_too(tmp_path):
    out = tmp_path / "student.json"
    assert benchmark.main(["--accelerator", "cpu", "--arch", "segformer_b0", "--input-size", "64x64",
                           "--batch-size", "4", "--steps", "2", "--warmup", "1", "--num-workers", "0",
                           "--threads", "1", "--stages", "smhm,pseudo_label", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["settings"]["arch"] == "segformer_b0"
    assert positive(report["smhm"]["fast"]["images_per_s"]) and positive(report["smhm"]["fast"]["tflops"])
    # 4 x (2 + 1) = 12 list entries, more than the 8 distinct files: each entry needs a name of its
    # own, as the datasets refuse two images of one name
    assert positive(report["pseudo_label"]["fast"]["images_per_s"])
