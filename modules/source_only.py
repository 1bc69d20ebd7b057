"""``source_only``: the provider's side — supervised training on a labelled source domain (GTA5 or
SYNTHIA layout, label ids converted to train ids on the fly), validated on the target. This is how
a user builds their own black box; the demo uses it to train its provider."""
import dataclasses

from modules.base import SegmentationModule


@dataclasses.dataclass(frozen=True)
class SourceOptions:
    source_dataset: str
    source_root: str


class SourceOnlyModule(SegmentationModule):
    Options = SourceOptions
    train_source = "source"

    @classmethod
    def add_args(cls, parser):
        group = parser.add_argument_group("source_only")
        group.add_argument("--source-dataset", choices=("gta5", "synthia"), default="gta5",
                           help="layout of --source-root: gta5 (images/, labels/ with Cityscapes label ids) or "
                                "synthia (RGB/, GT/LABELS/) (default: %(default)s)")
        group.add_argument("--source-root", default="./data/GTA5", help="labelled source dataset (default: %(default)s)")
        return parser
