"""Counter-based random numbers (``chip_fast.rng``): Philox known answers, keep masks and fill
noise keyed by (seed, class, sample, channel) rather than by batch or chunk, and their rates
and moments."""
import pytest
import torch

from chip_fast import rng


def t(*v):
    return torch.tensor(v, dtype=torch.int64)


def test_philox_known_answers():
    # Known-answer vectors of Random123 (philox4x32, 10 rounds).
    assert [int(x) for x in rng.philox4x32(t(0), t(0), t(0), t(0), 0)] == \
        [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    ones = t(0xFFFFFFFF)
    assert [int(x) for x in rng.philox4x32(ones, ones, ones, ones, 2**64 - 1)] == \
        [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    pi = rng.philox4x32(t(0x243F6A88), t(0x85A308D3), t(0x13198A2E), t(0x03707344),
                        0xA4093822 | 0x299F31D0 << 32)
    assert [int(x) for x in pi] == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_masks_are_keyed_not_batched():
    full = rng.keep_masks(7, torch.arange(100), 37, 0.5)
    some = rng.keep_masks(7, torch.tensor([93, 4, 50]), 37, 0.5)
    assert torch.equal(some, full[[93, 4, 50]])
    # A layer with fewer channels sees the first channels of the same stream.
    assert torch.equal(rng.keep_masks(7, torch.arange(100), 5, 0.5), full[:, :5])
    assert not torch.equal(rng.keep_masks(8, torch.arange(100), 37, 0.5), full)


def test_mask_rate_and_noise_moments():
    z = rng.keep_masks(0, torch.arange(4000), 50, 0.3)
    assert abs(z.float().mean().item() - 0.3) < 0.01
    n = 20000
    eps = rng.fill_noise(1, torch.zeros(n, dtype=torch.long), torch.arange(n),
                         torch.zeros(n, dtype=torch.long), 7)
    assert eps.shape == (n, 7) and torch.isfinite(eps).all()
    assert abs(eps.mean().item()) < 0.02 and abs(eps.std().item() - 1) < 0.02
    corr = torch.corrcoef(eps.t())
    assert (corr - torch.eye(7)).abs().max() < 0.03


def test_noise_depends_on_class():
    a = rng.fill_noise(0, t(1, 2), t(5, 5), t(3, 3), 9)
    assert not torch.equal(a[0], a[1])
    assert torch.equal(a, rng.fill_noise(0, t(1, 2), t(5, 5), t(3, 3), 9))


def test_noise_is_keyed_not_chunked(monkeypatch):
    # The CPU path generates noise in cache-sized chunks; a row must not depend on the chunking.
    n = 300
    args = (3, torch.arange(n) % 7, torch.arange(n) // 7, torch.arange(n) % 11, 13)
    whole = rng.fill_noise(*args)
    monkeypatch.setattr(rng, "_NOISE_CHUNK", 16)   # 4 rows of 4 blocks per chunk, 75 chunks
    chunked = rng.fill_noise(*args)
    assert torch.equal(whole, chunked)
    # Row 264 is (class 5, sample 37, channel 0): generated alone, it is the same row.
    assert torch.equal(rng.fill_noise(3, t(5), t(37), t(0), 13)[0], whole[264])


def test_noise_means_are_keyed_by_class_and_sample():
    a = rng.noise_means(3, torch.tensor([1, 1, 2]), torch.tensor([5, 6, 5]), 9)
    b = rng.noise_means(3, torch.tensor([1]), torch.tensor([6]), 9)
    assert torch.equal(a[1], b[0]) and not torch.equal(a[0], a[2])


@pytest.mark.parametrize("design", rng.MASK_DESIGNS)
@pytest.mark.parametrize("start,stop", [(0, 7), (3, 10), (5, 6), (4, 8), (1024, 1536)])
def test_a_range_of_masks_is_the_same_masks(start, stop, design):
    """A unit's masks drawn at once (no host read of unique draws) equal the per-sample ones,
    odd starts and ends of pairs included."""
    want = rng.keep_masks(3, torch.arange(start, stop), 37, 0.5, design)
    got = rng.keep_masks_range(3, start, stop, 37, 0.5, design)
    assert torch.equal(got, want)
