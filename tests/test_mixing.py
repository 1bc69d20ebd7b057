import pytest
import torch

from tools.benchmark import published_spatial_mix
from utils.mixing import draw_spatial_mix as _draw, mix_with_draws, random_flip, spatial_mix, spatial_mix_sources


def _indexed_batch(n, h, w, num_classes=None, logits_dtype=torch.float32):
    """Images whose pixels hold their own batch index, logits one-hot in that index."""
    index = torch.arange(n, dtype=torch.float32)[:, None, None, None]
    images = index.expand(n, 3, h, w).clone()
    num_classes = num_classes or n
    logits = torch.zeros(n, num_classes, h, w, dtype=logits_dtype)
    logits[torch.arange(n), torch.arange(n)] = 10
    return images, logits


def _quadrant_split(sources):
    """Recover (x, y) from a source map: the anchor region is exactly [0, y) × [0, x)."""
    n = sources.shape[0]
    anchor = sources == torch.arange(n)[:, None, None]
    xs = anchor[:, 0, :].sum(-1)
    ys = anchor[:, :, 0].sum(-1)
    return xs, ys


def test_mixed_labels_follow_mixed_image_pixels():
    images, logits = _indexed_batch(5, 24, 40)
    mixed_images, mixed_logits = spatial_mix(images, logits, 0.25, torch.Generator().manual_seed(3))
    assert mixed_images.shape == images.shape and mixed_logits.shape == logits.shape
    labels = mixed_logits.argmax(1)
    assert torch.equal(labels, mixed_images[:, 0].long())
    # all three colour channels come from the same source
    assert torch.equal(mixed_images[:, 0], mixed_images[:, 2])


def test_quadrants_come_from_anchor_and_from_other_images():
    n, h, w = 4, 30, 50
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        sources = spatial_mix_sources(n, h, w, 0.25, gen)
        xs, ys = _quadrant_split(sources)
        for i in range(n):
            x, y = int(xs[i]), int(ys[i])
            assert int(0.2 * w) <= x <= int(0.8 * w)
            assert int(0.2 * h) <= y <= int(0.8 * h)
            s = sources[i]
            assert (s[:y, :x] == i).all()
            for quadrant in (s[:y, x:], s[y:, :x], s[y:, x:]):
                assert quadrant.numel() > 0
                # one source per quadrant, and never the anchor
                assert (quadrant == quadrant.flatten()[0]).all()
                assert int(quadrant.flatten()[0]) != i


def test_other_images_are_drawn_uniformly_with_replacement():
    n = 4
    gen = torch.Generator().manual_seed(1)
    others = torch.stack([_draw(n, 8, 8, 0.25, gen)[0] for _ in range(1000)])  # 1000×N×3
    assert (others != torch.arange(n)[None, :, None]).all()
    for i in range(n):
        counts = torch.bincount(others[:, i].flatten(), minlength=n).double() / (3 * 1000)
        expected = torch.full((n,), 1 / (n - 1), dtype=torch.float64)
        expected[i] = 0
        assert torch.allclose(counts, expected, atol=0.03)
    # with replacement: a quadrant source may repeat within one mixed image
    repeats = sum(len(set(row)) < 3 for row in others.reshape(-1, 3).tolist())
    assert repeats > 0.5 * others.shape[0] * n  # 1 - 3!/3^3 = 7/9 of rows repeat


def test_split_positions_follow_the_beta_distribution():
    beta = 0.25
    h = w = 100000
    _, xs, ys = _draw(20000, h, w, beta, torch.Generator().manual_seed(0))
    for pos, size in ((xs, w), (ys, h)):
        b = ((pos.double() / size) - 0.2) / 0.6
        assert abs(b.mean().item() - 0.5) < 0.01
        assert abs(b.var().item() - 1 / (4 * (2 * beta + 1))) < 0.01
    # x and y are independent
    corr = torch.corrcoef(torch.stack([xs.double(), ys.double()]))[0, 1]
    assert abs(corr.item()) < 0.03


@pytest.mark.parametrize("beta", [0.0, -1.0])
def test_non_positive_beta_splits_at_the_centre(beta):
    sources = spatial_mix_sources(3, 21, 34, beta, torch.Generator().manual_seed(0))
    xs, ys = _quadrant_split(sources)
    assert xs.tolist() == [17] * 3 and ys.tolist() == [10] * 3


def test_batched_equals_the_published_per_image_loop():
    n, h, w = 4, 16, 24
    gen_images = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, h, w, generator=gen_images)
    logits = torch.randn(n, 7, h, w, generator=gen_images)
    for beta in (0.25, 0.5, 0.0):
        draws = _draw(n, h, w, beta, torch.Generator().manual_seed(11))
        fast = mix_with_draws(images, logits, *draws)
        slow = published_spatial_mix(images, logits, *draws)
        assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])


def test_deterministic_with_a_generator_and_random_without_reseeding():
    images, logits = _indexed_batch(4, 20, 30)
    a = spatial_mix(images, logits, 0.5, torch.Generator().manual_seed(5))
    b = spatial_mix(images, logits, 0.5, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    gen = torch.Generator().manual_seed(5)
    first = spatial_mix_sources(4, 20, 30, 0.5, gen)
    second = spatial_mix_sources(4, 20, 30, 0.5, gen)
    assert not torch.equal(first, second)


def test_a_single_image_is_an_error():
    images, logits = _indexed_batch(1, 8, 8)
    with pytest.raises(ValueError, match="at least 2 images"):
        spatial_mix(images, logits, 0.25)


def test_mismatched_sizes_are_an_error():
    with pytest.raises(ValueError, match="same batch and size"):
        spatial_mix(torch.zeros(2, 3, 8, 8), torch.zeros(2, 5, 8, 4), 0.25)


def test_bf16_logits_keep_dtype_and_alignment():
    images, logits = _indexed_batch(3, 16, 16, num_classes=19, logits_dtype=torch.bfloat16)
    mixed_images, mixed_logits = spatial_mix(images, logits, 0.25, torch.Generator().manual_seed(0))
    assert mixed_logits.dtype == torch.bfloat16 and mixed_images.dtype == torch.float32
    assert torch.equal(mixed_logits.argmax(1), mixed_images[:, 0].long())


def test_flip_keeps_image_and_logits_aligned():
    images, logits = _indexed_batch(4, 12, 20)
    mixed = spatial_mix(images, logits, 0.25, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    flipped_count = 0
    for _ in range(40):
        flipped_images, flipped_logits = random_flip(*mixed, generator=gen)
        assert torch.equal(flipped_logits.argmax(1), flipped_images[:, 0].long())
        was_flipped = torch.equal(flipped_images, mixed[0].flip(-1))
        assert was_flipped or torch.equal(flipped_images, mixed[0])
        assert torch.equal(flipped_logits, mixed[1].flip(-1) if was_flipped else mixed[1])
        flipped_count += was_flipped
    assert 5 < flipped_count < 35
    assert torch.equal(random_flip(*mixed, p=0.0)[0], mixed[0])
    assert torch.equal(random_flip(*mixed, p=1.0)[0], mixed[0].flip(-1))
