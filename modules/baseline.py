"""``baseline``: cross-domain distillation (stage 3) — cross-entropy against the provider's
pseudo-labels of the target training images (ignore index 255)."""
import dataclasses

from modules.base import SegmentationModule
from modules.data import add_pseudo_label_root_arg


@dataclasses.dataclass(frozen=True)
class BaselineOptions:
    pseudo_label_root: str


class BaselineModule(SegmentationModule):
    Options = BaselineOptions
    train_source = "pseudo_labels"

    @classmethod
    def add_args(cls, parser):
        group = parser.add_argument_group("baseline")
        add_pseudo_label_root_arg(group, "./experiments/gta5_pseudo_label/", "what the student learns from")
        return parser
