"""Samplers: every index on exactly one rank; the patch stream cycles and differs per rank."""
from collections import Counter

from datasets.samplers import CyclingSampler, ShardSampler


def test_shard_sampler_covers_each_index_once():
    for world in (1, 2, 3):
        seen = Counter(i for rank in range(world) for i in ShardSampler(7, rank, world))
        assert seen == Counter(range(7))


def test_cycling_sampler_length_and_full_passes():
    sampler = CyclingSampler(5, num_samples=10)
    indices = list(sampler)
    assert len(indices) == len(sampler) == 10
    assert sorted(indices[:5]) == list(range(5)) and sorted(indices[5:]) == list(range(5))


def test_cycling_sampler_continues_across_epochs_and_ranks_disjoint():
    stream = []
    for epoch in range(3):
        per_rank = []
        for rank in range(2):
            sampler = CyclingSampler(6, num_samples=3, rank=rank, world_size=2, seed=4)
            sampler.set_epoch(epoch)
            per_rank.append(list(sampler))
        stream += [i for pair in zip(*per_rank) for i in pair]
    # The 18 positions of three epochs are exactly three shuffled passes over the 6 patches.
    for k in range(3):
        assert sorted(stream[6 * k:6 * (k + 1)]) == list(range(6))
    assert stream[:6] != stream[6:12] or stream[6:12] != stream[12:]


def test_skip_sampler_leaves_out_the_first_indices_of_one_pass_only():
    from datasets.samplers import SkipSampler

    inner = CyclingSampler(10, 6, seed=3)
    sampler = SkipSampler(inner)
    sampler.set_epoch(2)
    full = list(sampler)
    assert len(sampler) == 6 and inner.epoch == 2
    sampler.skip = 4
    assert list(sampler) == full[4:]
    assert list(sampler) == full  # the next pass is whole again
