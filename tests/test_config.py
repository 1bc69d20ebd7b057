"""The typed configuration (modules/config.py, utils/config.py): every flag lands in one typed
field, the configuration cannot change after parsing, a run saves it, and --config runs it again."""
import dataclasses
import json

import pytest

from modules import MODULES, runner
from modules.config import CONFIG_FILE, RunConfig, build_parser, parse_args
from tests.fixtures import make_cityscapes
from utils.cli import UserError
from utils.config import flat


@pytest.mark.parametrize("stage", list(MODULES))
def test_every_flag_is_one_typed_field(stage):
    # --config only says where the settings come from; it is no setting of its own.
    dests = {a.dest for a in build_parser(stage)._actions if a.option_strings} - {"help", "config"}
    config = parse_args(["--module-name", stage])
    fields = set(flat(config)) - ({"stage"} if config.stage is None else set())
    assert fields == dests  # no flag lost, none invented
    counted = [f.name for section in (config.network, config.optim, config.evaluation, config.hardware, config.data)
               for f in dataclasses.fields(section)]
    counted += [f.name for f in dataclasses.fields(RunConfig) if not dataclasses.is_dataclass(f.type) and f.name != "stage"]
    counted += [f.name for f in dataclasses.fields(config.stage)] if config.stage is not None else []
    assert len(counted) == len(set(counted)) == len(dests)  # each in exactly one place


def test_configuration_is_frozen_and_replace_is_explicit():
    config = parse_args(["--module-name", "smhm", "--max-steps", "7"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optim.max_steps = 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mode = "test"
    changed = config.replace(optim__max_steps=8, experiment_name="x")
    assert (changed.optim.max_steps, changed.experiment_name, config.optim.max_steps) == (8, "x", 7)
    assert changed.experiment_dir.endswith("smhm/x")


def test_the_stage_list_is_the_registry():
    choices = next(a.choices for a in build_parser()._actions if a.dest == "module_name")
    assert tuple(choices) == tuple(MODULES)


def test_experiments_dir_is_the_plain_name_of_log_tb_dir():
    assert parse_args(["--experiments-dir", "out"]).log_tb_dir == parse_args(["--log-tb-dir", "out"]).log_tb_dir == "out"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("config")
    tree = make_cityscapes(str(root / "cs"), train=4, val=2)
    (root / "lists").mkdir()
    argv = ["--module-name", "basic", "--image-root", tree["image_root"], "--label-root", tree["label_root"],
            "--list-root", str(root / "lists"), "--arch", "deeplabv2_tiny", "--input-size", "64x32",
            "--log-tb-dir", str(root / "exp"), "--num-workers", "0", "--accelerator", "cpu", "--devices", "1",
            "--train-batch-size", "2", "--max-steps", "2", "--val-interval", "2", "--visualize-interval", "0",
            "--experiment-name", "first", "--lr", "3e-4", "--flip-when-test", "--no-sync-batchnorm"]
    config = parse_args(argv)
    runner.train(config)
    return config, root / "exp" / "basic" / "first" / CONFIG_FILE


def test_a_run_saves_its_resolved_configuration(finished_run):
    config, path = finished_run
    saved = json.loads(path.read_text())
    assert saved["module_name"] == "basic" and saved["optim"]["lr"] == 3e-4
    assert saved["network"]["input_size"] == [64, 32] and saved["evaluation"]["flip_when_test"] is True
    assert saved["hardware"]["sync_batchnorm"] is False and saved["stage"] is None


def test_config_file_runs_again_and_flags_override_it(finished_run):
    config, path = finished_run
    again = parse_args(["--config", str(path)])
    assert again == config
    # A weight file that says its network wins over the file's flags (only typed flags win over it).
    from models.deeplabv2 import get_deeplabv2
    from models.networks import describe, save_weights

    weights = str(path.parent / "described.pth")
    save_weights(weights, get_deeplabv2(arch="deeplabv2_tiny").state_dict(), describe("deeplabv2_tiny", 19, (96, 48)))
    assert parse_args(["--config", str(path), "--restore-from", weights]).network.input_size == (96, 48)
    assert parse_args(["--config", str(path), "--restore-from", weights, "--input-size", "32x16"]).network.input_size \
        == (32, 16)
    changed = parse_args(["--config", str(path), "--experiment-name", "second", "--max-steps", "4"])
    assert (changed.experiment_name, changed.optim.max_steps, changed.optim.lr) == ("second", 4, 3e-4)
    assert changed.data == config.data and changed.network == config.network


def test_config_file_values_are_checked_as_flags(finished_run, tmp_path):
    _, path = finished_run
    saved = json.loads(path.read_text())
    cases = {
        "lr": (lambda d: d["optim"].update(lr=-1), "--lr"),
        "unknown": (lambda d: d.update(colour="blue"), "no flag for: colour"),
        "size": (lambda d: d["network"].update(input_size=[0, 32]), "--input-size"),
        "flip": (lambda d: d["evaluation"].update(flip_when_test="yes"), "flip_when_test must be true or false"),
        "fold": (lambda d: d["hardware"].update(fold_bn="false"), "fold_bn must be true or false"),  # not --fold-bn
    }
    for name, (change, message) in cases.items():
        data = json.loads(json.dumps(saved))
        change(data)
        broken = tmp_path / f"{name}.json"
        broken.write_text(json.dumps(data))
        with pytest.raises(UserError, match=message):
            parse_args(["--config", str(broken)])
    (tmp_path / "text.json").write_text("not json")
    with pytest.raises(UserError, match="not a JSON configuration"):
        parse_args(["--config", str(tmp_path / "text.json")])
    with pytest.raises(UserError, match="--config: file not found"):
        parse_args(["--config", str(tmp_path / "absent.json")])


@pytest.mark.parametrize("script, run_config", [("generate_pseudo_labels", "PseudoLabelRun"),
                                                ("construct_hard_patch", "MiningRun")])
def test_data_scripts_build_one_typed_configuration_from_every_flag(script, run_config):
    import importlib

    from modules import hard_patches, pseudo_labels
    from utils.config import build

    parser = importlib.import_module(script).build_parser()
    cls = getattr(pseudo_labels if run_config == "PseudoLabelRun" else hard_patches, run_config)
    dests = {a.dest for a in parser._actions if a.option_strings} - {"help"}
    config = build(cls, parser.parse_args([]))
    assert set(flat(config)) == dests
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.target.split = "val"


def test_one_vocabulary_for_the_target_in_every_entry_point(tmp_path):
    import construct_hard_patch
    import generate_pseudo_labels
    from modules.pseudo_labels import image_root_of, list_root_of
    from utils.config import build
    from modules.pseudo_labels import PseudoLabelRun

    words = ["--data-dir", "D", "--image-root", str(tmp_path), "--list-root", str(tmp_path)]
    config = parse_args(words)
    assert (config.data.data_dir, config.data.images, config.data.lists) == ("D", str(tmp_path), str(tmp_path))
    assert parse_args(["--data-dir", "D"]).data.images == "D/leftImg8bit"
    assert parse_args(["--data-dir", "D"]).data.labels == "D/gtFine2"
    for script in (generate_pseudo_labels, construct_hard_patch):
        parsed = script.build_parser().parse_args(words)
        assert (parsed.data_dir, parsed.image_root, parsed.list_root) == ("D", str(tmp_path), str(tmp_path))
    (tmp_path / "train").mkdir()
    target = build(PseudoLabelRun, generate_pseudo_labels.build_parser().parse_args(words)).target
    assert image_root_of(target) == str(tmp_path) and list_root_of(target) == str(tmp_path)
    with pytest.raises(UserError, match="give one of them"):
        list_root_of(dataclasses.replace(target, data_list=str(tmp_path / "train.txt")))


def test_a_saved_resume_is_not_replayed(finished_run, tmp_path):
    _, path = finished_run
    saved = json.loads(path.read_text())
    saved["resume"] = "last"
    resumed = tmp_path / "resumed.json"
    resumed.write_text(json.dumps(saved))
    assert parse_args(["--config", str(resumed)]).resume is None
    assert parse_args(["--config", str(resumed), "--resume", "last"]).resume == "last"


def test_hostile_config_files_are_one_line(tmp_path):
    """A file nested 100k deep, an oversized one, a NUL byte in a name: one line each, no traceback."""
    from modules.config import parse_args
    from utils.cli import UserError

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    big = tmp_path / "big.json"
    big.write_text('{"lr": 0.1, "pad": "' + "x" * (2 << 20) + '"}')
    nul = tmp_path / "nul.json"
    nul.write_text(json.dumps({"experiment_name": "a\u0000b"}))
    for path, words in ((deep, "not a JSON configuration"), (big, "is no configuration a run wrote"),
                        (nul, "--experiment-name: expected a name without control characters")):
        with pytest.raises(UserError, match=words):
            parse_args(["--config", str(path)])


def test_a_saved_name_that_starts_with_a_dash_replays(tmp_path):
    from modules.config import parse_args

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"experiment_name": "-dash", "lr": 0.001}))
    config = parse_args(["--config", str(path)])
    assert config.experiment_name == "-dash" and config.optim.lr == 0.001
