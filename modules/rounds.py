"""Self-distillation rounds without hand-work (stage 7), each kept only if it helped.

The published recipe repeats self-distillation by hand: extract the best student of a round and
restart ``smhm`` from it. ``main.py --rounds N`` does exactly that: round ``k`` trains in
``<log-tb-dir>/<module>/<experiment-name>_round_<k>``, its best student (by ``--select-by``, a
label-free score unless told otherwise) is extracted to ``student.pth`` there and starts round
``k + 1``. The guard: from the second round on, a round whose best score is not above the round
before it is not kept, and the rounds stop there. The first round is always kept: the weights it
starts from come from another kind of training (distillation on hard pseudo-labels), which the
label-free scores do not rank against self-distillation (measured in docs/demo.md: every score
rated the baseline above a first round that raised val mIoU by 1.5 to 4 points). A finished round leaves ``round.json``, so
rerunning the command after an interruption continues where it stopped. A table of the rounds goes
to ``<log-tb-dir>/<module>/<experiment-name>_rounds.csv``.
"""
import contextlib
import csv
import io
import json
import os

from models.deeplabv2 import extract_state_dict
from models.networks import describe, save_weights
from modules import runner
from utils.cli import UserError
from utils.io import atomic_write_text
from utils.run_folder import folder_lock, has_checkpoints, read_record


def train_rounds(config, rounds):
    """Train up to ``rounds`` rounds; returns one dict per round trained (round, restore_from,
    best_score, selected_by, student, kept), the last kept one the result."""
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


RECORD_FIELDS = {"round": int, "student": str, "best_score": (int, float), "selected_by": str, "kept": bool}


def _train_rounds(config, folders):
    results = []
    for k, folder in enumerate(folders, 1):
        kept = results[-1] if results else {"student": config.restore_from}  # the rounds stop at one not kept
        marker = os.path.join(folder, "round.json")
        if os.path.isfile(marker):
            result = read_record(marker, RECORD_FIELDS, "a finished round")
            result["student"] = _in_folder(result["student"], folder)
            print(f"round {k}: already finished ({result['selected_by']} {result['best_score']:.4f}), skipped")
        else:
            # Each round resumes on its own (an interrupted one from its last checkpoint, a new one
            # from the start), also when the command says --resume last.
            resume = "last" if has_checkpoints(folder) else None
            print(f"round {k}/{len(folders)}: {config.module_name} from {kept['student']}")
            trained = runner.train(_round_config(config, k, restore_from=kept["student"], resume=resume))
            if not trained["best_checkpoint"]:
                raise UserError(f"round {k} ended without a validated checkpoint in {folder}: "
                                "lower --val-interval or raise --max-steps")
            student = os.path.join(folder, "student.pth")
            n = config.network
            save_weights(student, extract_state_dict(trained["best_checkpoint"], "net"),
                         describe(n.arch, n.num_classes, n.input_size))
            # "last" has no score to compare: every round is kept, as without the guard.
            better = k == 1 or not config.round_guard or config.evaluation.select_by == "last" \
                or trained["best_score"] > kept["best_score"]
            result = {"round": k, "restore_from": kept["student"], "best_checkpoint": trained["best_checkpoint"],
                      "best_score": trained["best_score"], "selected_by": trained["selected_by"],
                      "student": student, "kept": better}
            atomic_write_text(marker, json.dumps(result, indent=2))
        results.append(result)
        if not result["kept"]:
            print(f"round {k} is not kept: its best {result['selected_by']} {result['best_score']:.4f} is not above "
                  f"{kept['best_score']:.4f} of round {kept['round']}; "
                  f"the rounds stop here, the result is {kept['student']}")
            break
    return results


def final_student(results):
    """The student the rounds end with: the last kept one (the first round always is)."""
    return [r for r in results if r["kept"]][-1]["student"]


def write_round_table(path, results):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["round", "best_score", "selected_by", "kept", "student", "restore_from"])
    for r in results:
        writer.writerow([r["round"], f"{r['best_score']:.6f}", r["selected_by"], r["kept"], r["student"],
                         r.get("restore_from") or ""])
    atomic_write_text(path, out.getvalue())
    print(f"\nround  {results[0]['selected_by']:>12}  kept")
    for r in results:
        print(f"{r['round']:>5}  {r['best_score']:12.4f}  {'yes' if r['kept'] else 'no'}")
    print(f"result: {final_student(results)}\ntable: {path}")
