"""Samplers that shard data across processes without the duplicates a padded sampler adds.

Evaluation and the data stages must see every image exactly once (padding with repeats changes
mIoU and writes files twice); the hard patch stream of self-distillation cycles through the patch
set so that every training step gets a fresh batch, and each rank gets different patches; a
resumed training epoch skips the batches its checkpoint had already trained on; rare-class sampling
draws the items that contain rare classes more often.
"""
import itertools

import torch
from torch.utils.data import Sampler


class ShardSampler(Sampler):
    """Indices ``rank, rank + world_size, ...`` of a dataset: every index on exactly one rank."""

    def __init__(self, dataset_len, rank=0, world_size=1):
        self.indices = range(rank, dataset_len, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class CyclingSampler(Sampler):
    """``num_samples`` indices per epoch and rank, taken from an endless stream of shuffled passes.

    The stream is the concatenation of permutations seeded by ``seed + pass``; epoch ``e`` takes the
    next ``num_samples * world_size`` positions of it and rank ``r`` every ``world_size``-th one, so
    ranks never share a position and the stream continues where the previous epoch stopped.
    """

    def __init__(self, dataset_len, num_samples, rank=0, world_size=1, seed=0):
        if dataset_len <= 0:
            raise ValueError("CyclingSampler needs a non-empty dataset")
        self.dataset_len, self.num_samples = dataset_len, num_samples
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def _permutation(self, k):
        generator = torch.Generator().manual_seed(self.seed + k)
        return torch.randperm(self.dataset_len, generator=generator)

    def __iter__(self):
        stride = self.num_samples * self.world_size
        positions = range(self.epoch * stride + self.rank, (self.epoch + 1) * stride, self.world_size)
        current_pass, permutation = None, None
        for position in positions:
            k, offset = divmod(position, self.dataset_len)
            if k != current_pass:
                current_pass, permutation = k, self._permutation(k)
            yield int(permutation[offset])

    def __len__(self):
        return self.num_samples


class SkipSampler(Sampler):
    """``sampler`` whose next pass leaves out its first ``skip`` indices (then ``skip`` is 0 again):
    a resumed epoch continues where its checkpoint left it. Its length stays the full pass."""

    def __init__(self, sampler):
        self.sampler, self.skip = sampler, 0

    def set_epoch(self, epoch):
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.sampler), skip, None)

    def __len__(self):
        return len(self.sampler)


def drawable_classes(item_counts, class_pixels):
    """The classes rare-class sampling can draw (C, bool): some item contains them and they have pixels."""
    return (torch.as_tensor(item_counts) > 0).any(dim=0) & (torch.as_tensor(class_pixels) > 0)


class RareClassSampler(Sampler):
    """Rare-class sampling (DAFormer's RCS): each draw picks a class ``c`` with probability
    ``softmax((1 - f_c) / temperature)`` over the classes that some item contains, ``f_c`` being
    class ``c``'s share of ``class_pixels``, then one of the items containing ``c`` uniformly.

    ``item_counts``: pixels of each class in each item (N x C). Epoch ``e`` draws
    ``num_samples * world_size`` items from a generator seeded by ``seed`` and ``e`` alone, and rank
    ``r`` takes every ``world_size``-th from position ``r``: the same seed gives the same items, and a
    resumed epoch (:class:`SkipSampler`) continues the same sequence.
    """

    def __init__(self, item_counts, class_pixels, num_samples, temperature, rank=0, world_size=1, seed=0):
        present = torch.as_tensor(item_counts) > 0
        pixels = torch.as_tensor(class_pixels, dtype=torch.float64)
        candidates = drawable_classes(present, pixels)
        if not candidates.any():
            raise ValueError("RareClassSampler needs an item that contains a class")
        rarity = (1.0 - pixels / pixels.sum()).masked_fill(~candidates, float("-inf"))
        # shifted so that the rarest class has logit 0: a tiny temperature gives -inf, never inf - inf
        logits = (rarity - rarity.max()) / temperature
        self.class_probability = logits.softmax(dim=0)
        self.items_of = [present[:, c].nonzero().flatten() for c in range(present.shape[1])]
        self.num_items, self.num_samples = present.shape[0], num_samples
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def item_probability(self):
        """The probability of each item in one draw."""
        probability = torch.zeros(self.num_items, dtype=torch.float64)
        for p, items in zip(self.class_probability, self.items_of):
            if p > 0:
                probability[items] += p / len(items)
        return probability

    def __iter__(self):
        generator = torch.Generator().manual_seed((self.seed << 24) + self.epoch)
        total = self.num_samples * self.world_size
        classes = torch.multinomial(self.class_probability, total, replacement=True, generator=generator)
        uniform = torch.rand(total, generator=generator, dtype=torch.float64)
        for position in range(self.rank, total, self.world_size):
            items = self.items_of[classes[position]]
            yield int(items[min(int(uniform[position] * len(items)), len(items) - 1)])

    def __len__(self):
        return self.num_samples
