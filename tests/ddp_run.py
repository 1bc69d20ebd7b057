"""Runs ``main.main`` under ``--strategy ddp`` for tests (``tests/test_students_hardware.py``), recording
what every process saw.

    python tests/ddp_run.py RUNS.json OUT_DIR

runs ``main(argv)`` for each ``argv`` of the JSON list RUNS.json, in order, in one Python process per
rank: Lightning starts the other ranks by running this same command line (as it runs ``main.py``'s),
and a later Trainer of the same script reuses the process group. Each rank writes
``OUT_DIR/rank<r>.json``, one entry per run: what ``main`` returned there and, from a callback added
to the run's Trainer, the rank and world size, the norm layers the Trainer left in the networks, digests
(SHA-1 of the bytes) of every parameter and buffer of the student and the teacher at the start and
the end of training, and the hard patches of every step.
"""
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

import torch  # noqa: E402
from pytorch_lightning.callbacks import Callback  # noqa: E402

from main import main  # noqa: E402
from modules import runner  # noqa: E402


def digests(net):
    """``{name: SHA-1}`` of every parameter and buffer of ``net``."""
    state = dict(net.named_parameters())
    state.update(net.named_buffers())
    return {name: hashlib.sha1(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
            for name, t in state.items()}


def norm_layers(net):
    """``{class name: count}`` of the normalisation layers of ``net``."""
    counts = {}
    for m in net.modules():
        if "Norm" in type(m).__name__:
            counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    return counts


class Record(Callback):
    def __init__(self):
        self.seen = {"patches": []}

    def _networks(self, module):
        return {"net": module.net, **({"ema_net": module.ema_net} if hasattr(module, "ema_net") else {})}

    def setup(self, trainer, module, stage):
        self.seen["rank"], self.seen["world_size"] = trainer.global_rank, trainer.world_size

    def on_train_start(self, trainer, module):
        self.seen["norms"] = {name: norm_layers(net) for name, net in self._networks(module).items()}
        self.seen["start"] = {name: digests(net) for name, net in self._networks(module).items()}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if "patches" in batch:
            self.seen["patches"].append(list(batch["patches"]["name"]))

    def on_train_end(self, trainer, module):
        self.seen["end"] = {name: digests(net) for name, net in self._networks(module).items()}


def json_value(value):
    return value.tolist() if hasattr(value, "tolist") else str(value)


if __name__ == "__main__":
    runs_file, out = sys.argv[1:]
    records = []
    build_trainer = runner.build_trainer

    def recording_trainer(config):
        trainer = build_trainer(config)
        records.append(Record())
        trainer.callbacks.append(records[-1])
        return trainer

    runner.build_trainer = recording_trainer
    entries = []
    for argv in json.load(open(runs_file)):
        result = main(argv)
        entries.append({"result": result, **records[-1].seen})
    with open(os.path.join(out, f"rank{entries[0]['rank']}.json"), "w") as f:
        json.dump(entries, f, default=json_value)
