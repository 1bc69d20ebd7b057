"""``basic``: supervised training on the target's ground-truth labels (the oracle).

In test mode it is the plain evaluator: ``main.py --module-name basic --mode test --restore-from W``.
"""
from modules.base import SegmentationModule


class BasicModule(SegmentationModule):
    train_source = "labels"
