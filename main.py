"""Train or evaluate one stage of the method.

    python main.py --module-name baseline --mode train --restore-from ./pretrained/gta5_only.pth ...
    python main.py --module-name smhm --mode train --restore-from ./pretrained/basic.pth ...
    python main.py --mode test --restore-from W [--flip-when-test] [--save-predictions DIR]
    python main.py --mode predict --restore-from W --target-dataset folder --data-dir DIR --save-predictions OUT
    python main.py --config experiments/baseline/NAME/config.json [flags that change it]

``python main.py --module-name NAME --help`` lists the flags of stage NAME; ``modules/config.py``
declares them.
"""
import sys

from modules.config import parse_args
from utils.cli import run


def main(argv=None):
    """Run the command line ``argv``; returns the result (the runner's dict, the scores of test mode,
    or the list of rounds) to a caller, and prints where it went."""
    config = parse_args(argv)
    import pytorch_lightning as pl

    from modules import runner

    pl.seed_everything(config.optim.seed, workers=True, verbose=False)
    if config.mode == "test":
        return runner.test(config)
    if config.mode == "predict":
        from modules.predict import predict

        return predict(config)
    if config.rounds is not None:
        from modules.rounds import train_rounds

        return train_rounds(config, config.rounds)
    result = runner.train(config)
    best = "none" if result["best_score"] is None else f"{result['best_score']:.4g}"
    print(f"best checkpoint: {result['best_checkpoint']} ({result['selected_by']} {best})")
    return result


if __name__ == "__main__":
    run(main, sys.argv[1:])
