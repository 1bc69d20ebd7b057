"""tools/benchmark.py: one tiny CPU run of every stage in both configurations, and its flag checks."""
import json
import math
import types

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
    (["--configs", "fast,faster"], "--configs"),
    (["--accelerator", "cpu", "--configs", "fast,compile_step_cudagraphs"], "compile_step_cudagraphs captures CUDA graphs"),
    (["--accelerator", "cpu", "--compile-mode", "max-autotune"], "--compile-mode max-autotune needs --compile"),
    (["--compile", "fast"], "--compile"),
])
def test_bad_flags_name_the_flag(argv, flag):
    with pytest.raises(UserError, match=flag):
        benchmark.main(argv)


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        benchmark.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--accelerator", "--arch", "--input-size", "--batch-size", "--steps", "--warmup", "--num-workers",
                 "--threads", "--stages", "--channels-last", "--autocast", "--compile", "--compile-mode", "--configs",
                 "--compile-backend", "--keep-going", "--json"):
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


def test_variants_are_measured_against_fast_and_failures_are_recorded(tmp_path, monkeypatch):
    out = tmp_path / "variants.json"
    original = benchmark.Bench.module

    def fail_for_network(bench, module_name, cfg):
        if cfg.name == "compile_network":
            raise RuntimeError("planted failure")
        return original(bench, module_name, cfg)

    monkeypatch.setattr(benchmark.Bench, "module", fail_for_network)
    assert benchmark.main(["--accelerator", "cpu", "--arch", "deeplabv2_tiny", "--input-size", "64x32",
                           "--batch-size", "2", "--steps", "2", "--warmup", "1", "--num-workers", "0", "--threads", "1",
                           "--stages", "baseline,val", "--configs", "fast,compile_step,compile_network",
                           "--compile-backend", "eager", "--keep-going", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    baseline = report["baseline"]
    assert set(baseline) == {"fast", "compile_step", "compile_network", "speedup", "vs_fast"}
    assert baseline["speedup"] is None  # published was not measured
    assert baseline["compile_network"] == {"error": "RuntimeError: planted failure"}
    assert baseline["vs_fast"]["compile_network"] is None
    assert positive(baseline["vs_fast"]["compile_step"]) and positive(baseline["compile_step"]["first_step_ms"])
    assert baseline["compile_step"]["compile_s"] >= 0 and "compile_s" not in baseline["fast"]
    assert "torch.compile of the networks and the step" in report["settings"]["configurations"]["compile_step"]
    assert set(report["val"]) == {"fast", "speedup"}  # the variants change training steps only
    assert report["settings"]["compile_backend"] == "eager" and report["device"]["pytorch_lightning"]
    table = benchmark.format_table(report)
    assert "compile_step" in table and "failed: RuntimeError: planted failure" in table


def test_fit_puts_the_lightning_log_level_and_the_mixing_back(monkeypatch):
    """The benchmark quietens Lightning while it trains, and only then (it runs inside test sessions);
    the published configuration trains with the published per-image SpatialMix, and only then."""
    import logging

    from modules import spatial_mix

    log = logging.getLogger("pytorch_lightning")
    log.setLevel(logging.INFO)
    batched = spatial_mix.mix_with_draws
    seen = []

    class Trainer:
        def fit(self, *args, **kwargs):
            seen.append((log.level, spatial_mix.mix_with_draws))

    monkeypatch.setattr(benchmark, "make_trainer", lambda *args, **kwargs: Trainer())
    bench = benchmark.Bench.__new__(benchmark.Bench)
    bench.device = types.SimpleNamespace(type="cpu")
    for loop_mix in (True, False):
        bench.fit(None, {}, types.SimpleNamespace(autocast=False, cudnn_benchmark=False, loop_mix=loop_mix), 1)
    assert seen == [(logging.WARNING, benchmark.published_spatial_mix), (logging.WARNING, batched)]
    assert log.level == logging.INFO and spatial_mix.mix_with_draws is batched
