"""Self-distillation rounds without hand-work (stage 7).

The published recipe repeats self-distillation by hand: extract the best student of a round and
restart ``smhm`` from it. ``main.py --rounds N`` does exactly that: round ``k`` trains in
``<log-tb-dir>/<module>/<experiment-name>_round_<k>``, its best student (by val mIoU) is
extracted to ``student.pth`` there and starts round ``k + 1``. A finished round leaves
``round.json``, so rerunning the command after an interruption continues where it stopped.
A table of the rounds goes to ``<log-tb-dir>/<module>/<experiment-name>_rounds.csv``.
"""
import contextlib
import csv
import io
import json
import os

import torch

from models.deeplabv2 import extract_state_dict
from modules import runner
from utils.cli import UserError
from utils.io import atomic_write_bytes, atomic_write_text
from utils.run_folder import folder_lock, has_checkpoints, read_record


def _save_state_dict(state, path):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def train_rounds(config, rounds):
    """Train ``rounds`` rounds; returns one dict per round (round, restore_from, best_miou, student)."""
    if not config.restore_from:
        raise UserError("--rounds needs --restore-from: the weights the first round starts from")
    if config.resume not in (None, "last"):
        raise UserError("--resume PATH does not combine with --rounds: rerun the same --rounds command and "
                        "each unfinished round continues from its own last checkpoint")
    folders = [_round_config(config, k).experiment_dir for k in range(1, rounds + 1)]
    with contextlib.ExitStack() as stack:
        # Every round folder is held for the whole command (utils/run_folder.py): a second command
        # with this name stops at once, instead of slipping in between two rounds.
        for folder in folders:
            stack.enter_context(folder_lock(folder, "--experiment-name"))
        results = _train_rounds(config, folders)
        write_round_table(os.path.join(config.log_tb_dir, config.module_name, f"{config.experiment_name}_rounds.csv"),
                          results)
    return results


def _round_config(config, k, **changes):
    return config.replace(experiment_name=f"{config.experiment_name}_round_{k}", **changes)


def _in_folder(path, folder):
    """``path``, or the file of that name in ``folder`` when it was recorded in another folder: a
    copied or renamed round folder goes on with its own files, never with the original's."""
    if os.path.realpath(os.path.dirname(path)) == os.path.realpath(folder):
        return path
    return os.path.join(folder, os.path.basename(path))


def _train_rounds(config, folders):
    results, restore_from = [], config.restore_from
    for k, folder in enumerate(folders, 1):
        marker = os.path.join(folder, "round.json")
        if os.path.isfile(marker):
            result = read_record(marker, {"student": str, "best_checkpoint": str, "best_miou": (int, float)},
                                 "a finished round")
            result["student"] = _in_folder(result["student"], folder)
            result["best_checkpoint"] = _in_folder(result["best_checkpoint"], folder)
            print(f"round {k}: already finished (best val mIoU {result['best_miou']:.2f}), skipped")
        else:
            # Each round resumes on its own (an interrupted one from its last checkpoint, a new one
            # from the start), also when the command says --resume last.
            resume = "last" if has_checkpoints(folder) else None
            print(f"round {k}/{len(folders)}: {config.module_name} from {restore_from}")
            trained = runner.train(_round_config(config, k, restore_from=restore_from, resume=resume))
            if not trained["best_checkpoint"]:
                raise UserError(f"round {k} ended without a validated checkpoint in {folder}: "
                                "lower --val-interval or raise --max-steps")
            student = os.path.join(folder, "student.pth")
            _save_state_dict(extract_state_dict(trained["best_checkpoint"], "net"), student)
            result = {"round": k, "restore_from": restore_from, "best_checkpoint": trained["best_checkpoint"],
                      "best_miou": trained["best_miou"], "student": student}
            atomic_write_text(marker, json.dumps(result, indent=2))
        results.append(result)
        restore_from = result["student"]
    return results


def write_round_table(path, results):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["round", "best_val_miou", "student", "restore_from"])
    for r in results:
        writer.writerow([r["round"], f"{r['best_miou']:.2f}", r["student"], r["restore_from"]])
    atomic_write_text(path, out.getvalue())
    print("\nround  best val mIoU")
    for r in results:
        print(f"{r['round']:>5}  {r['best_miou']:13.2f}")
    print(f"table: {path}")
