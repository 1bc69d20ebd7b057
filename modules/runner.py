"""Running a stage: the Trainer (devices, precision, distribution, checkpoints, logging) around a
stage module and the data module. ``main.py`` parses flags and calls :func:`train` or
:func:`test`; the round automation calls them in a loop."""
import contextlib
import os
import shutil
import warnings

import torch
from pytorch_lightning.callbacks import Checkpoint, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger

from modules import MODULES
from modules.callbacks import CompileTime, PredictionPNGs, ScoreRecord, TrainingPictures, check_records, report_test
from modules.config import CONFIG_FILE
from modules.data import SegmentationDataModule
from utils.cli import UserError
from utils.compile import use_cache_dir
from utils.config import write_config
from utils.lightning import interruptible, make_trainer
from utils.run_folder import check_outside_images, claim_folder, folder_lock, has_checkpoints, latest_checkpoint
from utils.torch_files import load_torch_file, reading_as_data


def _check_experiment_dir(config):
    """Refuse to start a second run on top of a finished one (its checkpoints would be mixed)."""
    if config.mode != "train" or config.resume:
        return
    if has_checkpoints(config.experiment_dir):
        raise UserError(f"{config.experiment_dir} already holds checkpoints of a run: continue it with "
                        "--resume last, or choose another --experiment-name")


def _resolve_resume(config):
    if not config.resume:
        return None
    path = latest_checkpoint(config.experiment_dir) if config.resume == "last" else config.resume
    if not os.path.isfile(path):
        raise UserError(f"--resume: checkpoint not found: {path}")
    return path


def _check_resume_checkpoint(path, module, stage):
    """Refuse a ``--resume`` file that is not a training checkpoint of this stage and network, with
    one line, before Lightning reads it (it reads the file with the same restricted unpickler)."""
    checkpoint = load_torch_file(path, "checkpoint (--resume)", mmap=True)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict) \
            or "loops" not in checkpoint:
        raise UserError(f"--resume {path} is not a training checkpoint written by main.py (weights to start "
                        "from go to --restore-from)")
    # The training state Lightning restores besides the weights; without it a resume would fail deep
    # inside Lightning, or quietly restart the optimiser.
    loops, optimizers = checkpoint.get("loops"), checkpoint.get("optimizer_states")
    incomplete = [name for name, ok in (
        ("loops.fit_loop", isinstance(loops, dict) and isinstance(loops.get("fit_loop"), dict)),
        ("optimizer_states", isinstance(optimizers, list) and len(optimizers) == 1
         and all(isinstance(o, dict) and "state" in o for o in optimizers)),
        ("global_step", isinstance(checkpoint.get("global_step"), int)),
    ) if not ok]
    if incomplete:
        raise UserError(f"--resume {path} is an incomplete training checkpoint (missing or damaged: "
                        f"{', '.join(incomplete)}); resume from another one, or start again")
    schedulers = checkpoint.get("lr_schedulers", [])
    expected = 0 if module.schedule() == "constant" else 1
    if not isinstance(schedulers, list) or len(schedulers) != expected:
        raise UserError(f"--resume {path} holds {len(schedulers) if isinstance(schedulers, list) else 'no'} "
                        f"learning-rate schedule state(s), this run's --lr-schedule {module.schedule()} needs "
                        f"{expected}: was it trained with another --lr-schedule?")
    saved_stage = (checkpoint.get("hyper_parameters") or {}).get("module_name")
    if saved_stage and saved_stage != stage:
        raise UserError(f"--resume {path} is a checkpoint of stage {saved_stage}, not {stage}")
    expected, found = module.state_dict(), checkpoint["state_dict"]
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(found) if tuple(found[k].shape) != tuple(expected[k].shape))
    if "teacher_marginal" in set(missing) | set(unexpected):
        raise UserError(f"--resume {path} was trained {'without' if missing else 'with'} --distribution-alignment: "
                        f"resume it {'without' if missing else 'with'} the flag, or start again")
    if missing or unexpected or misshaped:
        problems = [f"{name} {len(keys)} (e.g. {keys[0]})" for name, keys in
                    (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys]
        raise UserError(f"--resume {path} does not fit this {stage} run's networks (another --arch, "
                        f"--num-classes or stage?): {'; '.join(problems)} weights")


def build(config):
    """Module, data module and checked inputs: every user mistake surfaces here, before training.
    A caller that runs them holds the output folders (:func:`holding_outputs`)."""
    interval, max_steps = config.evaluation.val_interval, config.optim.max_steps
    if config.mode == "train" and isinstance(interval, int) and interval > max_steps:
        raise UserError(f"--val-interval {interval} is more steps than --max-steps {max_steps}: the "
                        "run would never validate, so it would keep no best checkpoint")
    _check_experiment_dir(config)
    if config.mode == "test" and config.evaluation.save_predictions:
        check_outside_images(config.evaluation.save_predictions, "--save-predictions", config.data.target().images)
    resume = _resolve_resume(config)
    module_class = MODULES[config.module_name]
    module = module_class(config)
    if resume:
        _check_resume_checkpoint(resume, module, config.module_name)
    data = SegmentationDataModule(config, module_class.train_source, use_patches=module_class.use_patches)
    data.check("fit" if config.mode == "train" else "test")
    return module, data, resume


@contextlib.contextmanager
def holding_outputs(config):
    """Hold the folders the run writes (``utils/run_folder.py``): the experiment folder (checkpoints,
    logs and the record, also of test mode) and the ``--save-predictions`` folder of test mode."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(folder_lock(config.experiment_dir, "--experiment-name"))
        if config.mode == "test" and config.evaluation.save_predictions:
            stack.enter_context(folder_lock(config.evaluation.save_predictions, "--save-predictions"))
        yield


class BestCheckpoint(ModelCheckpoint):
    """The best checkpoint by ``--select-by`` (a label-free score, or val mIoU), kept in the experiment folder. Lightning saves this
    callback's state in every checkpoint with absolute paths (the best checkpoints and their
    scores), and on resume keeps only the best path when the folder differs: a copied or moved
    experiment resumed under its new name would report, and extract, the original folder's best
    checkpoint, and keep two bests of its own. So on loading, the saved paths are taken relative to
    the folder they were saved in and found again in this run's folder; one not there is forgotten.
    The saved format stays Lightning's own, so older checkpoints resume and newer ones read anywhere."""

    @property
    def state_key(self):
        # The key Lightning files this state under; a subclass's name would orphan older checkpoints'.
        return ModelCheckpoint.__qualname__ + super().state_key[len(type(self).__qualname__):]

    def load_state_dict(self, state_dict):
        saved_dir = state_dict.get("dirpath") or self.dirpath

        def here(path):
            if not path:
                return None
            relative = os.path.relpath(path, saved_dir)
            local = os.path.join(self.dirpath, relative)
            return local if not relative.startswith(os.pardir) and os.path.isfile(local) else None

        best_k = {here(path): score for path, score in (state_dict.get("best_k_models") or {}).items()}
        best_k.pop(None, None)
        state = {**state_dict, "dirpath": self.dirpath, "best_k_models": best_k, "best_model_path": "",
                 "best_model_score": None, "last_model_path": here(state_dict.get("last_model_path")) or ""}
        state.pop("kth_best_model_path", None)
        state.pop("kth_value", None)
        if best_k:
            better, worse = (max, min) if self.mode == "max" else (min, max)
            state["best_model_path"] = better(best_k, key=best_k.get)
            state["best_model_score"] = best_k[state["best_model_path"]]
            if len(best_k) == self.save_top_k:
                state["kth_best_model_path"] = worse(best_k, key=best_k.get)
                state["kth_value"] = best_k[state["kth_best_model_path"]]
        super().load_state_dict(state)


class LastCheckpoint(Checkpoint):
    """``last.ckpt``: the latest training state, after every validation and at the end of training,
    for ``--resume last``. Lightning's own ``save_last`` only moves when the best checkpoint does, so
    a run interrupted after a validation that did not improve would resume from an older step. The
    file is replaced in one step: an interruption while saving leaves the previous one intact. As a
    ``Checkpoint`` it runs after the best-checkpoint callback, so it records that callback's state
    after the same validation."""

    def __init__(self, dirpath):
        self.path = os.path.join(dirpath, "last.ckpt")
        self.saved_step = None

    def save(self, trainer):
        if trainer.sanity_checking or trainer.state.fn != "fit" or trainer.global_step == self.saved_step:
            return
        partial = self.path + ".partial"
        if trainer.is_global_zero and os.path.islink(partial):
            os.remove(partial)  # written through, a planted link would overwrite the file it points to
        trainer.save_checkpoint(partial, weights_only=False)  # every process takes part; the first one writes
        if trainer.is_global_zero:
            os.replace(partial, self.path)
        self.saved_step = trainer.global_step

    def on_validation_end(self, trainer, pl_module):
        self.save(trainer)

    def on_train_end(self, trainer, pl_module):
        self.save(trainer)


def sync_batchnorm(config):
    """Whether BatchNorm layers become SyncBatchNorm. As published, on for training on GPUs;
    Lightning converts them only under a multi-process strategy, so on one device it changes
    nothing. PyTorch's SyncBatchNorm does not run on CPU tensors."""
    hw = config.hardware
    if hw.sync_batchnorm is None:
        return config.mode == "train" and hw.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if hw.sync_batchnorm and hw.accelerator == "cpu":
        raise UserError("--sync-batchnorm needs GPUs (PyTorch's SyncBatchNorm does not run on CPU); "
                        "drop it or add --no-sync-batchnorm")
    return hw.sync_batchnorm


def build_trainer(config):
    # Checkpoints deliberately share the experiment folder with the logs and the record.
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    if config.network.freeze_bn_stats:  # the frozen BN layers are in eval mode on purpose
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    logger = TensorBoardLogger(save_dir=config.log_tb_dir, name=config.module_name, version=config.experiment_name,
                               default_hp_metric=False)
    callbacks = []
    if config.mode == "train":
        callbacks += [
            BestCheckpoint(dirpath=config.experiment_dir, filename=config.evaluation.monitor[1],
                           monitor=config.evaluation.monitor[0], mode="max", save_top_k=1,
                           auto_insert_metric_name=False),
            LastCheckpoint(config.experiment_dir),
            LearningRateMonitor(logging_interval="step"),
        ]
        if config.evaluation.visualize_interval:
            callbacks.append(TrainingPictures(config.evaluation.visualize_interval))
        if config.hardware.compile != "off":
            callbacks.append(CompileTime(use_cache_dir(config.log_tb_dir)))
    elif config.hardware.compile != "off":
        use_cache_dir(config.log_tb_dir)
    e = config.evaluation  # a test's record row says how it predicted, beside the weights
    how = ", ".join([*(["flip"] if e.flip_when_test else []),
                     *([f"scales {','.join(map(str, e.scales))}"] if tuple(e.scales) != (1.0,) else [])])
    how = f" ({how})" if how else ""
    callbacks.append(ScoreRecord(os.path.join(config.experiment_dir, "miou_record.csv"),
                                 test_title=f"test ({config.restore_from or 'no weights'}){how}",
                                 select_by=config.evaluation.select_by, run_folder=config.experiment_dir,
                                 test_weights=(config.restore_from or "none (random initialisation)") + how,
                                 num_classes=config.network.num_classes))
    if config.mode == "test" and config.evaluation.save_predictions:
        callbacks.append(PredictionPNGs(config.evaluation.save_predictions))
    val_interval = config.evaluation.val_interval
    return make_trainer(
        config.hardware, max_epochs=config.optim.max_epochs, max_steps=config.optim.max_steps, val_check_interval=val_interval,
        # An integer interval counts steps across epochs, a fraction is a share of each epoch.
        check_val_every_n_epoch=None if isinstance(val_interval, int) else 1,
        log_every_n_steps=config.evaluation.log_interval, logger=logger, callbacks=callbacks,
        default_root_dir=config.experiment_dir, num_sanity_val_steps=0,
        # The data module shards every loader itself (no padded duplicates in evaluation).
        use_distributed_sampler=False,
        enable_model_summary=False,
        benchmark=True,  # cuDNN picks the fastest convolution algorithms for the fixed input size
        sync_batchnorm=sync_batchnorm(config),
    )


def train(config):
    """Train a stage; returns ``{"best_checkpoint", "best_score", "selected_by", "last_checkpoint",
    "experiment_dir"}`` (the best checkpoint's ``--select-by`` score)."""
    with holding_outputs(config):
        module, data, resume = build(config)
        trainer = build_trainer(config)
        data.steps_per_epoch(trainer.world_size)  # a refusal now, before the logger writes anything
        write_config(os.path.join(config.experiment_dir, CONFIG_FILE), config)
        with interruptible(trainer, f"the checkpoints so far are kept in {config.experiment_dir}; "
                                    "add --resume last to the same command to continue"):
            with reading_as_data():  # the checkpoint is read as _check_resume_checkpoint read it: data, never code
                trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_score
    return {"best_checkpoint": checkpoint.best_model_path or None,
            "best_score": float(best) if best is not None else None, "selected_by": config.evaluation.select_by,
            "last_checkpoint": os.path.join(config.experiment_dir, "last.ckpt"),
            "experiment_dir": config.experiment_dir}


def test(config):
    """Evaluate ``--restore-from`` on the val split; returns the scores (per-class IoU and means, %)."""
    if not config.restore_from:
        raise UserError("--mode test needs --restore-from: the weights to evaluate")
    if os.path.isdir(config.restore_from):  # a black box known by its label maps: nothing to run
        from modules.label_map_box import test_scores

        record = os.path.join(config.experiment_dir, "miou_record.csv")
        check_records(record, config.network.num_classes)
        scores = test_scores(config)
        with holding_outputs(config):
            write_config(os.path.join(config.experiment_dir, CONFIG_FILE), config)
            report_test(record, scores, f"test ({config.restore_from}, label maps)", config.restore_from)
        return scores
    save = config.evaluation.save_predictions
    fresh = [folder for folder in (config.experiment_dir, save) if folder and not os.path.exists(folder)]
    try:
        with holding_outputs(config):
            module, data, _ = build(config)
            trainer = build_trainer(config)
            if save:  # predictions of other weights or settings are not mixed into the folder
                from modules.predict import STATE, settings_of

                claim_folder(os.path.join(save, STATE), {**settings_of(config), "mode": "test"},
                             config.evaluation.overwrite, [os.path.join(save, k) for k in ("train_ids", "color")],
                             flag="--save-predictions")
            write_config(os.path.join(config.experiment_dir, CONFIG_FILE), config)
            with interruptible(trainer, "only the record and the configuration were written"):
                trainer.test(module, datamodule=data, verbose=False)
    except UserError:  # a label or image refused part-way: a test that made its folders leaves nothing
        for folder in fresh:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return module.last_scores
