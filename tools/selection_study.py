"""How well does each label-free score choose checkpoints? Measured on demo runs whose val split has labels.

    python -m tools.selection_study experiments/demo experiments/demo_seed1 experiments/demo_seed2

Every validation of every stage ``adapt.py`` trained (baseline, each round) wrote its label-free
scores (``label_free_record.csv``) and, the demo's val split being labelled, its val mIoU
(``miou_record.csv``): labels that no label-free score sees, so they judge them. Per criterion:

- ``spearman``: the rank correlation of the score with val mIoU over a stage's validations (mean
  over stages);
- ``regret``: val mIoU of the best validation minus that of the one the criterion picks (mean and
  worst over stages); ``last`` picks the last validation;
- ``below``: stages where the pick is below the black box's val mIoU while a validation above it exists.

Then, on the demo's own test split (``results.json``), the round the guard kept against the best
round: its regret, and whether it fell below the black box while a round above it exists. Prints a table and, with ``--json FILE``, writes it.
"""
import argparse
import csv
import json
import os
import sys

import numpy as np

from utils.cli import ArgumentParser, UserError, run
from utils.criteria import CRITERIA


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def stage_records(demo):
    """``{stage: (label-free rows as dicts, val mIoU per validation)}`` of a demo's adaptation runs."""
    runs = os.path.join(demo, "adapt", "runs")
    stages = {}
    for module in ("baseline", "smhm"):
        root = os.path.join(runs, module)
        for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            free_path, miou_path = (os.path.join(root, name, f) for f in ("label_free_record.csv", "miou_record.csv"))
            if not (os.path.isfile(free_path) and os.path.isfile(miou_path)):
                continue
            free = [dict(zip(rows[0], r)) for rows in [read_rows(free_path)] for r in rows[1:] if r[0] != "test"]
            miou_rows = read_rows(miou_path)
            column = miou_rows[0].index("Mean")
            mious = [float(r[column]) for r in miou_rows[1:] if r[0] != "test"]
            if free and len(free) == len(mious):
                stages[f"{os.path.basename(demo)}/{name}"] = (free, mious)
    return stages


def black_box_val_miou(demo):
    """The black box's best val mIoU (its training record); ``nan`` where the demo did not train it."""
    path = os.path.join(demo, "runs", "source_only", "source_only", "miou_record.csv")
    if not os.path.isfile(path):
        return float("nan")
    rows = read_rows(path)
    column = rows[0].index("Mean")
    return max(float(r[column]) for r in rows[1:])


def ranks(values):
    order = np.argsort(values, kind="stable")
    ranked = np.empty(len(values))
    ranked[order] = np.arange(len(values))
    return ranked


def spearman(a, b):
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def study(demos):
    per_criterion = {c: {"spearman": [], "regret": [], "below": 0} for c in (*CRITERIA, "last")}
    stages, unknown = 0, []
    for demo in demos:
        black_box = black_box_val_miou(demo)
        if black_box != black_box:
            unknown.append(demo)
        for free, mious in stage_records(demo).values():
            stages += 1
            mious = np.array(mious)
            for criterion, entry in per_criterion.items():
                if criterion == "last":
                    pick = len(mious) - 1
                else:
                    scores = np.array([float(row[criterion]) for row in free])
                    pick = int(np.argmax(scores))
                    entry["spearman"].append(spearman(scores, mious))
                entry["regret"].append(float(mious.max() - mious[pick]))
                entry["below"] += int(mious[pick] < black_box < mious.max())
    if not stages:
        raise UserError("no stage with both label_free_record.csv and miou_record.csv under the given demos")
    table = {}
    for criterion, entry in per_criterion.items():
        correlations = [v for v in entry["spearman"] if v == v]
        table[criterion] = {"spearman": round(float(np.mean(correlations)), 3) if correlations else None,
                            "mean_regret": round(float(np.mean(entry["regret"])), 2),
                            "worst_regret": round(float(np.max(entry["regret"])), 2), "below": entry["below"]}
    return {"stages": stages, "demos": list(demos), "criteria": table, "below_unknown": unknown}


def round_picks(demos):
    """Per demo with a ``results.json``: the test mIoU of each round, of the one the round guard kept
    (the adapted model) and of the black box; ``regret`` is the best round's minus the kept one's,
    ``below`` whether the kept one is below the black box while a round above it exists."""
    picks = []
    for demo in demos:
        path = os.path.join(demo, "results.json")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            stages = json.load(f)["stages"]
        test = {name: stage["test"]["miou"] for name, stage in stages.items()}
        rounds = [test[name] for name in sorted((n for n in test if n.startswith("smhm_round_")),
                                                key=lambda n: int(n.rsplit("_", 1)[1]))]
        if not rounds:
            continue
        kept, black_box = test["adapted"], test["black_box"]
        picks.append({"demo": demo, "black_box": black_box, "rounds": rounds, "kept": kept,
                      "regret": round(max(rounds) - kept, 2), "below": kept < black_box < max(rounds)})
    return picks


def build_parser():
    parser = ArgumentParser(prog="python -m tools.selection_study", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demos", nargs="+", metavar="DEMO", help="demo output folders (demo.py --out)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the table as JSON here")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    for demo in args.demos:
        if not os.path.isdir(os.path.join(demo, "adapt", "runs")):
            raise UserError(f"{demo}: not a demo folder (no adapt/runs)")
    result = study(args.demos)
    print(f"{result['stages']} stages of {len(args.demos)} demo(s); val mIoU judges, no criterion sees it")
    if result["below_unknown"]:
        print(f"below bb counts only the demos with the black box's training record; not: {', '.join(result['below_unknown'])}")
    print(f"{'criterion':<12} {'spearman':>9} {'mean regret':>12} {'worst regret':>13} {'below bb':>9}")
    for criterion, row in result["criteria"].items():
        spear = "—" if row["spearman"] is None else f"{row['spearman']:.3f}"
        print(f"{criterion:<12} {spear:>9} {row['mean_regret']:>12.2f} {row['worst_regret']:>13.2f} {row['below']:>9}")
    result["rounds"] = round_picks(args.demos)
    if result["rounds"]:
        print("\nthe round the guard kept, on the test split (results.json): regret = best round - kept")
        for pick in result["rounds"]:
            print(f"{pick['demo']}: black box {pick['black_box']:.2f}, rounds "
                  f"{' / '.join(f'{v:.2f}' for v in pick['rounds'])}, kept {pick['kept']:.2f}, regret "
                  f"{pick['regret']:.2f}{', BELOW the black box' if pick['below'] else ''}")
        print(f"mean regret {np.mean([p['regret'] for p in result['rounds']]):.2f} over {len(result['rounds'])} demo(s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    run(main, sys.argv[1:])
