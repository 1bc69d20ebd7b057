"""``baseline``: cross-domain distillation (stage 3) — cross-entropy against the provider's
pseudo-labels of the target training images (ignore index 255); with ``--complementary-weight`` also
the complementary labels (ATP). Its flags: ``modules/config.BaselineOptions``."""
import torch

from modules.base import SegmentationModule


def complementary_loss(logits, sets):
    """Mean over the pixels that have complementary classes (``sets``: N×H×W, bit ``c`` for class
    ``c``) of the mean of ``-log(1 - p_c)`` over those classes, ``p`` the softmax of ``logits``.

    ``1 - p_c`` is the softmax mass of the other classes, summed without a subtraction for the
    pixel's top class, so a student sure of a class it should not be still gets a gradient."""
    z = logits.float()
    bits = 2 ** torch.arange(z.shape[1], device=z.device, dtype=torch.int32)
    negative = (sets.int()[:, None] & bits[None, :, None, None]) > 0
    e = (z - z.amax(dim=1, keepdim=True)).exp()
    total = e.sum(dim=1, keepdim=True)
    top = torch.zeros_like(e, dtype=torch.bool).scatter_(1, z.argmax(dim=1, keepdim=True), True)
    rest_of_top = (e * ~top).sum(dim=1, keepdim=True)  # the other classes' mass where c is on top
    log_not_p = torch.where(top, rest_of_top.clamp_min(1e-30), total - e).log() - total.log()
    count = negative.sum(dim=1)
    per_pixel = -(log_not_p * negative).sum(dim=1) / count.clamp_min(1)
    return per_pixel.sum() / (count > 0).sum().clamp_min(1)


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
