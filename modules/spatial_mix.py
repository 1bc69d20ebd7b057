"""``spatial_mix``: self-distillation with SpatialMix (stage 6 without hard patches).

Student and EMA teacher start from the baseline weights. Each step the teacher labels the batch,
SpatialMix recombines quadrants of different images *at their own positions* (so the street
layout survives), the student learns the teacher's argmax on a photometrically augmented copy,
weighted by the share of confident pixels, and the teacher follows the student by EMA after the
optimiser step (the published code updated one step earlier, before the optimiser step; with
α close to 1 the two are equivalent in practice). Its flags: ``modules/config.SelfDistillationOptions``.
"""
import copy
from typing import NamedTuple, Optional

import torch

from datasets.pixels import denormalize_to_rgb01, normalize_rgb01
from modules.base import SegmentationModule, cross_entropy
from modules.config import SelfDistillationOptions
from utils.augment import augment_draws, photometric_augment_with
from utils.cli import UserError
from utils.ema import ema_alpha, ema_lerp, ema_update, stochastic_layers_off
from utils.mixing import draw_spatial_mix, flip_coin, flip_with_coin, mix_with_draws

GENERATOR_STATE_KEY = "spatial_mix_generator_state"  # in the checkpoint: rank 0's random stream


DISTRIBUTION_ALIGNMENT_ALPHA = 0.99  # largest EMA factor of the teacher's running class marginal


def consistency_target(logits, threshold=SelfDistillationOptions.confidence_threshold, source="softmax", prior=None):
    """Teacher target (argmax) and the step's consistency weight: the share of pixels whose
    confidence reaches ``threshold``. ``source="logits"`` compares raw logits instead of softmax
    probabilities, as the published code did by mistake. ``prior``: ``(target_share, marginal)``
    (C each) for distribution alignment: the probabilities are first multiplied per class by
    ``target_share / marginal`` and renormalised per pixel."""
    scores = logits.float().softmax(dim=1) if source == "softmax" else logits.float()
    if prior is not None:
        target_share, marginal = prior
        scores = scores * (target_share.clamp_min(1e-6) / marginal.clamp_min(1e-6)).view(1, -1, 1, 1)
        scores = scores / scores.sum(dim=1, keepdim=True)
    confidence, target = scores.max(dim=1)
    weight = (confidence >= threshold).float().mean()
    return target, weight


class StepDraws(NamedTuple):
    """Every random number of one self-distillation step, drawn on the device before the tensor
    work: SpatialMix's sources (N×3) and split points (N, N), the flip coin (0-dim), the
    augmentation's factors (N×7; ``None`` with ``--no-augment``)."""
    others: torch.Tensor
    xs: torch.Tensor
    ys: torch.Tensor
    flip: torch.Tensor
    colour: Optional[torch.Tensor]


def student_batch(images, teacher_logits, draws, threshold, source, alignment=None):
    """The tensor work between the teacher and the student: SpatialMix of the images and the
    teacher's logits, the batch flip, the teacher's target and weight (:func:`consistency_target`),
    the photometric augmentation; returns (student images, target, weight). Every random number
    comes in ``draws``, so nothing is read back to the host and ``--compile step`` compiles it whole.
    ``alignment``: ``(target_share, marginal, rate)`` for ``--distribution-alignment``: the running
    class marginal of the teacher (C, updated in place) moves by ``rate`` (0-dim) towards the mean
    probability of the mixed batch, and aligns the target to ``target_share``."""
    mixed_images, mixed_logits = mix_with_draws(images, teacher_logits, draws.others, draws.xs, draws.ys)
    mixed_images, mixed_logits = flip_with_coin(draws.flip, mixed_images, mixed_logits)
    prior = None
    if alignment is not None:
        target_share, marginal, rate = alignment
        marginal.lerp_(mixed_logits.float().softmax(dim=1).mean(dim=(0, 2, 3)), rate)
        prior = (target_share, marginal)
    target, weight = consistency_target(mixed_logits, threshold, source, prior)
    if draws.colour is not None:
        mixed_images = normalize_rgb01(photometric_augment_with(denormalize_to_rgb01(mixed_images), draws.colour))
    return mixed_images, target, weight


def weighted_cross_entropy(logits, target, weight):
    return weight * cross_entropy(logits, target)


class SpatialMixModule(SegmentationModule):
    train_source = "images"

    def __init__(self, config):
        if not config.restore_from and config.mode == "train":
            raise UserError(f"--restore-from is required for {config.module_name}: student and teacher start "
                            "from the baseline weights (extract_model_state_dict.py makes that file)")
        super().__init__(config)
        self.ema_net = copy.deepcopy(self.net)
        for parameter in self.ema_net.parameters():
            parameter.requires_grad_(False)
        self.generator = None
        self.saved_generator_state = None
        if self.options.distribution_alignment:
            # The teacher's running class marginal (in the checkpoint, so a resumed run continues it) and
            # the pseudo-labels' class shares (from the data module when training starts).
            uniform = torch.full((config.network.num_classes,), 1.0 / config.network.num_classes)
            self.register_buffer("teacher_marginal", uniform.clone())
            self.register_buffer("target_share", uniform.clone(), persistent=False)

    def networks(self):
        return [self.net, self.ema_net]

    def on_train_start(self):
        # One random stream per rank (Lightning seeds every rank alike). A resumed run continues the
        # stream its checkpoint saved, so a single-process run ends exactly as an uninterrupted one;
        # the checkpoint holds rank 0's stream only, so the other ranks restart theirs past the steps
        # already taken. (on_train_start runs after the checkpoint is restored, on_fit_start before.)
        self.generator = torch.Generator(device=self.device)
        if self.saved_generator_state is not None and self.global_rank == 0:
            self.generator.set_state(self.saved_generator_state)
        else:
            self.generator.manual_seed(self.optim.seed * 100003 + self.global_rank * 7919 + self.global_step)
        if self.options.distribution_alignment:
            self.target_share.copy_(torch.as_tensor(self.trainer.datamodule.drawn_class_share()))

    def on_save_checkpoint(self, checkpoint):
        super().on_save_checkpoint(checkpoint)
        if self.generator is not None:
            checkpoint[GENERATOR_STATE_KEY] = self.generator.get_state()

    def on_load_checkpoint(self, checkpoint):
        super().on_load_checkpoint(checkpoint)
        self.saved_generator_state = checkpoint.get(GENERATOR_STATE_KEY)

    def draw(self, images):
        """The step's random numbers, from the stage's generator on the device, in the order the
        method uses them: SpatialMix, the flip, the augmentation."""
        n, _, h, w = images.shape
        o = self.options
        others, xs, ys = draw_spatial_mix(n, h, w, o.position_beta, self.generator, images.device)
        flip = flip_coin(o.flip_prob, self.generator, images.device)
        colour = None if o.no_augment else augment_draws(n, self.generator, images.device)
        return StepDraws(others, xs, ys, flip, colour)

    def teacher_logits(self, images):
        """The EMA teacher's logits at the image size, its stochastic layers off unless --teacher-dropout."""
        if not self.options.teacher_dropout:
            stochastic_layers_off(self.ema_net)
        return self.ema_net(images, size=images.shape[-2:])

    def consistency_loss(self, images):
        o = self.options
        with torch.no_grad():
            teacher_logits = self.teacher_logits(images)
            alignment = None
            if o.distribution_alignment:  # the rate as a 0-dim tensor: a fill on the device, one compiled graph
                rate = 1.0 - ema_alpha(self.global_step, DISTRIBUTION_ALIGNMENT_ALPHA)
                alignment = (self.target_share, self.teacher_marginal, torch.full((), rate, device=images.device))
            student_images, target, weight = self.step_functions(student_batch)(
                images, teacher_logits, self.draw(images), o.confidence_threshold, o.confidence_source, alignment)
        logits = self.net(student_images, size=images.shape[-2:])
        loss = self.step_functions(weighted_cross_entropy)(logits, target, weight)
        self.log("train/consistency_weight", weight)
        return loss, (student_images, target, logits)

    def extra_loss(self, batch):
        """A loss a subclass adds to the consistency loss (smhm: the hard patch loss); none here."""
        return None

    def training_step(self, batch, batch_idx):
        consistency, picture = self.consistency_loss(batch["target"]["image"])
        extra = self.extra_loss(batch)
        loss = consistency if extra is None else consistency + extra
        self.log("train/consistency_loss", consistency)
        self.log("train/loss", loss)
        return {"loss": loss, "picture": picture}  # the picture for modules.callbacks.TrainingPictures

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # global_step already counts the optimiser step just taken; its 0-based index is one less.
        lerp = self.step_functions(ema_lerp) if self.step_functions.compiles else None
        ema_update(self.ema_net, self.net, self.global_step - 1, max_alpha=self.options.ema_alpha, lerp=lerp)
