"""``smhm``: SpatialMix + Hard patches Mining (stage 6) — the ``spatial_mix`` step plus a
cross-entropy on a batch of mined hard patches (rare classes, labelled by the provider)."""
import dataclasses

from modules.base import check_batch_statistics, cross_entropy
from modules.spatial_mix import SelfDistillationOptions, SpatialMixModule
from utils.cli import at_least, non_negative_float


@dataclasses.dataclass(frozen=True)
class SMHMOptions(SelfDistillationOptions):
    """The self-distillation flags and those of :meth:`SMHMModule.add_args`."""
    hard_patches_root: str = "./experiments/hard_patch_from_gta5_model/"
    hard_patch_weight: float = 0.1
    hard_patch_batch_size: int = None


class SMHMModule(SpatialMixModule):
    Options = SMHMOptions
    use_patches = True
    default_position_beta = 0.25

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        group = parser.add_argument_group("hard patches")
        group.add_argument("--hard-patches-root", default="./experiments/hard_patch_from_gta5_model/",
                           help="output folder of construct_hard_patch.py (patches/ and labels/); refused while its "
                                "mining has not finished (no summary.json); a folder made by hand is taken as it "
                                "is (default: %(default)s)")
        group.add_argument("--hard-patch-weight", type=non_negative_float, default=0.1,
                           help="weight of the hard patch loss (default: %(default)s)")
        group.add_argument("--hard-patch-batch-size", type=at_least(1), default=None,
                           help="patches per step and device (default: --train-batch-size)")
        return parser

    @classmethod
    def check_config(cls, config):
        super().check_config(config)
        if config.mode == "train" and config.stage.hard_patch_batch_size is not None:
            check_batch_statistics(config, config.stage.hard_patch_batch_size, "--hard-patch-batch-size")

    def extra_loss(self, batch):
        patches = batch["patches"]
        logits = self.net(patches["image"], size=patches["image"].shape[-2:])
        hard = self.step_functions(cross_entropy)(logits, patches["label"])
        self.log("train/hard_patch_loss", hard)
        return self.options.hard_patch_weight * hard
