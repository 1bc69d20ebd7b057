"""``baseline``: cross-domain distillation (stage 3) — cross-entropy against the provider's
pseudo-labels of the target training images (ignore index 255); with ``--complementary-weight`` also
the complementary labels (ATP). Its flags: ``modules/config.BaselineOptions``."""
import torch

from modules.base import SegmentationModule


def complementary_loss(logits, sets):
    """Mean over the pixels that have complementary classes (``sets``: N×H×W, bit ``c`` for class
    ``c``) of the mean of ``-log(1 - p_c)`` over those classes, ``p`` the softmax of ``logits``."""
    bits = 2 ** torch.arange(logits.shape[1], device=logits.device)
    negative = (sets[:, None] & bits[None, :, None, None]) > 0
    not_p = (1 - logits.float().softmax(dim=1)).clamp_min(1e-6)
    count = negative.sum(dim=1)
    per_pixel = -(torch.log(not_p) * negative).sum(dim=1) / count.clamp_min(1)
    return per_pixel[count > 0].sum() / (count > 0).sum().clamp_min(1)


class BaselineModule(SegmentationModule):
    train_source = "pseudo_labels"

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        weight = self.options.complementary_weight
        if weight:
            negative = self.step_functions(complementary_loss)(out["picture"][2], batch["target"]["complementary"])
            self.log("train/complementary_loss", negative)
            out["loss"] = out["loss"] + weight * negative
        return out
