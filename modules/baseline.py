"""``baseline``: cross-domain distillation (stage 3) — cross-entropy against the provider's
pseudo-labels of the target training images (ignore index 255). Its flags: ``modules/config.BaselineOptions``."""
from modules.base import SegmentationModule


class BaselineModule(SegmentationModule):
    train_source = "pseudo_labels"
