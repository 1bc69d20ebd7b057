"""``smhm``: SpatialMix + Hard patches Mining (stage 6) — the ``spatial_mix`` step plus a
cross-entropy on a batch of mined hard patches (rare classes, labelled by the provider). Its flags:
``modules/config.SMHMOptions``."""
from modules.base import cross_entropy
from modules.spatial_mix import SpatialMixModule


class SMHMModule(SpatialMixModule):
    use_patches = True

    def extra_loss(self, batch):
        patches = batch["patches"]
        logits = self.net(patches["image"], size=patches["image"].shape[-2:])
        hard = self.step_functions(cross_entropy)(logits, patches["label"])
        self.log("train/hard_patch_loss", hard)
        return self.options.hard_patch_weight * hard
