"""``baseline``: cross-domain distillation (stage 3) — cross-entropy against the provider's
pseudo-labels of the target training images (ignore index 255)."""
import dataclasses

from modules.base import SegmentationModule


@dataclasses.dataclass(frozen=True)
class BaselineOptions:
    pseudo_label_root: str


class BaselineModule(SegmentationModule):
    Options = BaselineOptions
    train_source = "pseudo_labels"

    @classmethod
    def add_args(cls, parser):
        group = parser.add_argument_group("baseline")
        group.add_argument("--pseudo-label-root", default="./experiments/gta5_pseudo_label/",
                           help="pseudo-labels from generate_pseudo_labels.py: its --save folder, its "
                                "label_ids/train folder, or any folder of <city>/<stem>_gtFine_labelIds.png; "
                                "refused while generate_pseudo_labels.py has not finished it (no summary.json) "
                                "(default: %(default)s)")
        return parser
