"""The DP-SGD CSPRNG: it is AES-128-CTR keyed from the OS, its normals are Gaussian (moments, KS at large
n), two runs are independent, masks are exact Bernoulli(q) with Binomial(n, q) batch sizes, and the snapped
noisy sum stays on its grid. Unseeded (keyed from the OS) unless a test needs a fixed stream; thresholds are
5-sigma / p < 1e-6, so a correct generator fails one of them about once in a million runs."""

from __future__ import annotations

import math
import os
from fractions import Fraction

import numpy as np
import pytest
import randomgen  # type: ignore[import-untyped]
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from scipy import stats  # type: ignore[import-untyped]

from privacy.training.dp_opacus import SecurePoissonSampler
from privacy.training.secure_random import (
    SecureRandom,
    bernoulli_threshold,
    noisy_sum,
    secure_random_available,
    snap_unit,
)

P_MIN = 1e-6
N_LARGE = 4_000_000


def _aes_ctr_words(key: bytes, blocks: int) -> np.ndarray:
    """The AES-128-CTR keystream (little-endian counter from 0) as uint64 words, from ``cryptography``."""
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # ECB of the counters = CTR
    stream = encryptor.update(b"".join(i.to_bytes(16, "little") for i in range(blocks)))
    return np.frombuffer(stream, dtype="<u8")


def test_the_generator_is_aes_128_ctr() -> None:
    key = os.urandom(16)
    expected = _aes_ctr_words(key, 64)
    assert np.array_equal(SecureRandom(key).raw64(128), expected)
    software = randomgen.AESCounter(key=int.from_bytes(key, "little"), counter=0)
    software.use_aesni = False  # the fallback for CPUs without AES-NI produces the same keystream
    assert np.array_equal(software.random_raw(128).astype(np.uint64), expected)
    assert secure_random_available()


def test_keys_come_from_the_os_unless_a_test_gives_one() -> None:
    a, b = SecureRandom(), SecureRandom()
    assert a.keyed_from_os and b.keyed_from_os
    assert not np.array_equal(a.raw64(4), b.raw64(4))
    key = bytes(range(16))
    fixed = SecureRandom(key)
    assert not fixed.keyed_from_os
    assert np.array_equal(fixed.raw64(8), SecureRandom(key).raw64(8))
    with pytest.raises(ValueError, match="16 bytes"):
        SecureRandom(b"short")


def test_a_forked_child_cannot_repeat_its_parents_stream() -> None:
    random = SecureRandom()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report whether drawing was refused, then leave at once
        try:
            random.standard_normal(4)
            os.write(write, b"drew")
        except RuntimeError:
            os.write(write, b"refused")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 16) == b"refused"
    random.standard_normal(4)  # the parent still draws


def test_normals_have_gaussian_moments_and_pass_kolmogorov_smirnov() -> None:
    z = SecureRandom().standard_normal(N_LARGE)
    assert z.dtype == np.float64
    n = z.size
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1.0) < 5 * math.sqrt(2 / n)
    assert abs(stats.skew(z)) < 5 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 5 * math.sqrt(24 / n)
    assert stats.kstest(z, "norm").pvalue > P_MIN
    tail = float(np.mean(np.abs(z) > 3.0))  # the ziggurat's tail branch: P(|Z| > 3) = 0.0026998
    assert abs(tail - 0.0026998) < 5 * math.sqrt(0.0027 / n)


def test_float32_normals_pass_kolmogorov_smirnov_too() -> None:
    z = SecureRandom().standard_normal(1_000_000, np.float32)
    assert z.dtype == np.float32
    assert stats.kstest(z.astype(np.float64), "norm").pvalue > P_MIN


def test_two_runs_draw_independent_noise() -> None:
    n = 1_000_000
    a, b = SecureRandom().standard_normal(n), SecureRandom().standard_normal(n)
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / math.sqrt(n)
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < 5 / math.sqrt(n)  # nor correlated along one stream
    assert stats.ks_2samp(a, b).pvalue > P_MIN  # same law
    assert np.intersect1d(a, b).size == 0  # no shared stretch of stream
    signs = stats.contingency.crosstab(a > 0, b > 0).count  # sign agreement: a 2x2 independence test
    assert stats.chi2_contingency(signs).pvalue > P_MIN


def test_bernoulli_threshold_is_exact_and_never_above_the_rate() -> None:
    assert bernoulli_threshold(0.0) == 0
    assert bernoulli_threshold(0.5) == 2**63
    assert bernoulli_threshold(1.0) == 2**64 - 1
    for rate in (0.04, 1 / 62, 1e-9, 0.999):
        t = int(bernoulli_threshold(rate))
        assert Fraction(t, 2**64) <= Fraction(rate) < Fraction(t + 1, 2**64)
    with pytest.raises(ValueError):
        bernoulli_threshold(1.5)


def test_poisson_batch_sizes_are_binomial_n_q() -> None:
    n, q, steps = 5_000, 0.04, 4_000
    sampler = SecurePoissonSampler(num_samples=n, sample_rate=q, random=SecureRandom())
    sampler.steps = steps
    counts = np.zeros(n, dtype=np.int64)
    sizes = []
    for batch in sampler:
        assert batch == sorted(set(batch)) and all(0 <= i < n for i in batch)
        counts[batch] += 1
        sizes.append(len(batch))
    size = np.asarray(sizes)
    assert abs(size.mean() - n * q) < 5 * math.sqrt(n * q * (1 - q) / steps)
    assert abs(size.var() / (n * q * (1 - q)) - 1.0) < 5 * math.sqrt(2 / steps)
    # Goodness of fit of the batch sizes to Binomial(n, q), bins with expected counts >= 5, tails merged.
    lo, hi = int(stats.binom.ppf(1e-3, n, q)), int(stats.binom.ppf(1 - 1e-3, n, q))
    edges = np.arange(lo, hi + 2)
    observed = np.histogram(size, bins=np.concatenate(([-1], edges[1:-1] - 0.5, [n + 1])))[0]
    cdf = stats.binom.cdf(edges[1:-1] - 1, n, q)
    expected = np.diff(np.concatenate(([0.0], cdf, [1.0]))) * steps
    assert stats.chisquare(observed, expected).pvalue > P_MIN
    # Every row is included at rate q (no row favoured): per-row counts are Binomial(steps, q).
    assert abs(counts.mean() - steps * q) < 5 * math.sqrt(steps * q * (1 - q) / n)
    assert stats.chisquare(counts).pvalue > P_MIN


def test_snap_unit_is_a_power_of_two_ten_bits_below_the_noise() -> None:
    for std in (1e-8, 0.3, 0.5, 1.0, 1.5, 3.0, 1234.5):
        unit = snap_unit(std)
        assert math.frexp(unit)[0] == 0.5  # a power of two
        assert std * 2.0**-11 < unit <= std * 2.0**-10
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            snap_unit(bad)


def test_noisy_sum_is_the_float64_sum_snapped_then_cast_once() -> None:
    rng = SecureRandom(bytes(16))  # a fixed stream: exact arithmetic is checked, not the law
    summed = torch.from_numpy(rng.standard_normal(50_000).astype(np.float32) * 7)
    normals = torch.from_numpy(rng.standard_normal(50_000))
    std = 1.3
    out = noisy_sum(summed, normals, std)
    assert out.dtype == torch.float32 and out.shape == summed.shape
    unit = snap_unit(std)
    exact = summed.double() + std * normals
    steps = out.double() / unit
    assert torch.equal(steps, steps.round())  # on the grid of multiples of the unit
    assert float((out.double() - exact).abs().max()) <= unit / 2 + 1e-12
