"""``source_only``: the provider's side — supervised training on a labelled source domain (GTA5 or
SYNTHIA layout, label ids converted to train ids on the fly), validated on the target. This is how
a user builds their own black box; the demo uses it to train its provider. Its flags:
``modules/config.SourceOptions``."""
from modules.base import SegmentationModule


class SourceOnlyModule(SegmentationModule):
    train_source = "source"
