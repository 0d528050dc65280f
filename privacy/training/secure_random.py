"""Cryptographically secure randomness for DP-SGD: Gaussian noise and Poisson masks without torchcsprng.

**Generator.** AES-128 in counter mode: ``randomgen.AESCounter`` (C, AES-NI when the CPU has it, a
software AES otherwise), a NumPy ``BitGenerator`` whose output is exactly the AES-CTR keystream
``AES_k(0) ‖ AES_k(1) ‖ …`` (little-endian 128-bit counter; a unit test checks it against
``cryptography``'s AES). Each :class:`SecureRandom` takes a fresh 128-bit key from the OS CSPRNG
(``secrets``/``os.urandom``); its counter starts at 0 and a run never comes near the 2¹²⁸-block period.
The only other way in is an explicit ``key`` (tests that need reproducibility): the harness never passes
one. Gaussians come from NumPy's ziggurat over that stream (float64: 52 random mantissa bits per draw),
Poisson masks from raw 64-bit words compared with an integer threshold (no float rounding).

Opacus's ``secure_mode`` needs ``torchcsprng`` (no build for torch 2.x), and its ``noise_generator`` must be
a ``torch.Generator``, which cannot be backed by an external CSPRNG. So the broker supplies the randomness
through subclasses (:mod:`privacy.training.dp_opacus`): a ``DPOptimizerFastGradientClipping`` /
``DPOptimizer`` whose ``add_noise`` draws from here, and a ``DPDataLoader`` whose batch sampler does.

**Floating-point defence** (the attacks of Mironov 2012 and Jin et al. 2022, arXiv:2112.05307: a
floating-point sampler's outputs form a sparse, value-dependent set, so the low bits of ``x + noise`` can
tell neighbouring inputs ``x`` apart). Opacus sums four float32 draws (Holohan & Braghin,
arXiv:2107.10138) to make that search infeasible; four draws per coordinate would cost more here than a
whole non-private epoch. The broker instead *snaps* (after Mironov's snapping mechanism):

1. one standard normal per coordinate in **float64**: NumPy's ziggurat puts a draw from its rectangles on a
   grid of at most ``3.92·2⁻⁵²`` (the base strip's width over 2⁵²), one from its tail (``|z| > r = 3.654``)
   on a grid that coarsens as ``e^{r(|z|-r)}``;
2. ``v = fl64(x + σ·z)`` in float64 (``x``, the clipped gradient sum, is exact in float64);
3. ``v`` is rounded to the nearest multiple of ``Λ``, a power of two with ``σ·2⁻¹¹ < Λ ≤ σ·2⁻¹⁰``
   (exact: scaling by a power of two, then ``round``), then cast once to the parameter's dtype.

Argument: every output is a fixed, public, data-independent rounding of ``x + σz``. An output cell
(``Λ`` wide, or wider where the float32 grid is coarser than ``Λ``) holds at least ``2³⁹`` points of the
sampler's grid *whatever* ``x`` is wherever the rectangles produce the draw (all but ``3·10⁻⁴`` of the
mass), ``2³⁶`` out to 5σ and ``2²¹`` out to 8σ; only beyond ~12σ (probability ``< 10⁻³²`` per draw, which
belongs in δ) can the grid be as coarse as ``Λ``. So each output is reachable from every input (no
support-based distinguisher: the attack has nothing to find) and each cell's probability equals the exact
Gaussian's to a relative error of about ``2⁻³⁸`` in the bulk (``≤ 2⁻²⁰`` out to 8σ); the float64 sum's
rounding, ``2⁻⁵³·|v|``, is far smaller for any ``|x| ≤ 2³⁰·σ``. With an exact Gaussian the released value
would be post-processing of the Gaussian mechanism and carry exactly the accountant's ε; summed over every
coordinate of a run (92,162 parameters × 2,000 steps) the bulk error moves the privacy loss by about
``10⁻³`` ε in the worst case. Snapping moves a coordinate by at most ``Λ/2 ≤ σ·2⁻¹¹``: no utility cost.

**Not defended / not claimed:** (a) the ziggurat itself is a float64 approximation of the Gaussian at the
``2⁻⁵²`` level (bounded above, not added to the reported ε); (b) its float64 tail cannot produce
``|z| > ~13.7``: that truncation has probability ``< 10⁻³⁸`` per draw and belongs in δ, where it is
negligible; (c) timing: noise is drawn before and independently of the gradient, so the sampler's
rejection loop cannot time the data, but the rest of the training step's timing is not hardened;
(d) the default RNG path (``secure_mode=False``, seeded, tests and benchmarks only) is Opacus's stock
single float32 draw from ``torch.Generator`` and has none of this.

**GPU:** noise is drawn on the CPU (the AES stream) and copied to the parameter's device; the snapped sum is
computed there in float64.
"""

from __future__ import annotations

import math
import os
import secrets
import threading
from fractions import Fraction

import numpy as np
import numpy.typing as npt
import randomgen  # type: ignore[import-untyped]  # ships .pyi files but no py.typed marker
import torch

KEY_BYTES = 16  # AES-128
SNAP_BITS = 10  # Λ ≤ σ·2⁻¹⁰: the snapping grid, 10 bits below the noise scale
_TWO_64 = 2**64


def secure_random_available() -> bool:
    """Whether the AES-CTR generator works here (the C extension imports and a block can be drawn)."""
    try:
        randomgen.AESCounter(key=1, counter=0).random_raw(1)
    except Exception:
        return False
    return True


class SecureRandom:
    """A CSPRNG for one training run: AES-128-CTR keyed from the OS (see the module docstring).

    ``key`` is for tests only: given, the stream is reproducible; omitted (always, in the harness), a fresh
    128-bit key comes from :mod:`secrets`. Thread-safe: NumPy holds the bit generator's lock per draw. A
    forked child may not draw from its parent's generator (the two streams would be the same).
    """

    def __init__(self, key: bytes | None = None) -> None:
        if key is not None and len(key) != KEY_BYTES:
            raise ValueError(f"an AES-128 key is {KEY_BYTES} bytes")
        self._keyed_from_os = key is None
        raw = secrets.token_bytes(KEY_BYTES) if key is None else key
        self._bits = randomgen.AESCounter(key=int.from_bytes(raw, "little"), counter=0)
        self._gen = np.random.Generator(self._bits)
        self._lock = threading.Lock()
        self._pid = os.getpid()

    @property
    def keyed_from_os(self) -> bool:
        """True when the key came from the OS CSPRNG (production); False for an explicit test key."""
        return self._keyed_from_os

    @property
    def uses_aesni(self) -> bool:
        """Whether the hardware AES instructions are in use (else randomgen's software AES, slower)."""
        return bool(self._bits.use_aesni)

    def standard_normal(self, n: int, dtype: type[np.floating] = np.float64) -> npt.NDArray[np.floating]:
        """``n`` independent N(0, 1) draws (ziggurat over the AES stream), float64 unless asked otherwise."""
        self._check_process()
        out = np.empty(n, dtype=dtype)
        self._gen.standard_normal(out=out, dtype=dtype)
        return out

    def raw64(self, n: int) -> npt.NDArray[np.uint64]:
        """``n`` uniform 64-bit words straight from the keystream."""
        self._check_process()
        with self._lock:
            return np.asarray(self._bits.random_raw(n), dtype=np.uint64)

    def _check_process(self) -> None:
        """Refuse to draw in a forked child: parent and child would repeat the same keystream."""
        if os.getpid() != self._pid:
            raise RuntimeError("a SecureRandom cannot be used across fork(): its stream would repeat")

    def bernoulli_mask(self, n: int, rate: float) -> npt.NDArray[np.bool_]:
        """``n`` independent Bernoulli(``rate``) draws: ``word < floor(rate·2⁶⁴)`` exactly.

        The probability is ``floor(rate·2⁶⁴)/2⁶⁴``: never above ``rate`` (sampling at most at the rate the
        accountant assumes) and below it by less than ``2⁻⁶⁴``.
        """
        return self.raw64(n) < bernoulli_threshold(rate)


def bernoulli_threshold(rate: float) -> np.uint64:
    """The integer threshold for :meth:`SecureRandom.bernoulli_mask` (exact rational arithmetic)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError("a sampling rate is in [0, 1]")
    return np.uint64(min(math.floor(Fraction(rate) * _TWO_64), _TWO_64 - 1))


def snap_unit(std: float) -> float:
    """``Λ``: the power of two with ``std·2⁻¹¹ < Λ ≤ std·2⁻¹⁰`` (the output grid of :func:`noisy_sum`)."""
    if not (std > 0.0 and math.isfinite(std)):
        raise ValueError("the noise scale must be positive and finite")
    _, exponent = math.frexp(std)  # std = m · 2**exponent with m in [0.5, 1)
    return math.ldexp(1.0, exponent - 1 - SNAP_BITS)


def noisy_sum(summed: torch.Tensor, normals: torch.Tensor, std: float) -> torch.Tensor:
    """``summed + std·normals`` in float64, snapped to the grid ``Λ``, cast once to ``summed``'s dtype.

    ``normals`` are float64 standard normals of ``summed``'s shape, on its device (module docstring).
    """
    unit = snap_unit(std)
    value = torch.add(summed.to(torch.float64), normals, alpha=std)
    return value.mul_(1.0 / unit).round_().mul_(unit).to(summed.dtype)
