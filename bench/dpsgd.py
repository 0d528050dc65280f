"""One epoch of DP-SGD through the harness's trainer versus the same model trained non-privately.

MLP 100->256->256->2 (92,162 parameters) on 50,000 generated rows, batch 256 (195 Poisson steps: 18.0M
noise values per epoch), same data, same thread count, same run. Three epochs are interleaved per repeat:

* ``nonprivate``: plain SGD, shuffled batches;
* ``private``: :class:`privacy.training.dpsgd.PrivateTrainer` as the harness runs it — secure mode (noise
  and Poisson masks from the AES-128-CTR CSPRNG, float64 snapped noise), book-keeping clipping;
* ``default_rng``: the same trainer with ``secure_mode=False`` (torch's generator, Opacus's stock noise).

``ratio = private_s / nonprivate_s`` and ``ratio_default_rng`` take, for each side, the best of
``--repeats`` runs. Times are process CPU seconds (``time.process_time``) with one torch thread: the machine
is shared, and CPU time is far less disturbed by others' load than wall time; the minimum of interleaved
runs is the least disturbed measurement. ``setup_s`` (the PRV noise calibration) is reported apart.
``noise_share`` is the CPU share of the secure epoch spent drawing the noise (timed inside the generator);
``noise_draws_per_s`` is the generator alone: float64 standard normals on one core, in per-step blocks.
Both sides fetch batches the same way (one gather per batch, :class:`privacy.training.dpsgd.TensorRows`).

    .venv/bin/python bench/dpsgd.py [--repeats 3] [--threads 1] [--clipping bookkeeping|ghost] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.utils.data import DataLoader

from privacy.training.dpsgd import (
    CLIPPING_MODE,
    PrivateTrainer,
    TensorRows,
    build_model,
    collate_rows,
    make_private_trainer,
)
from privacy.training.secure_random import SecureRandom
from privacy.training.spec import ModelSpec

ROWS, FEATURES, BATCH = 50_000, 100, 256
STEPS = round(ROWS / BATCH)  # the harness takes this from a DP count; here it is public
MODEL = ModelSpec("mlp", (256, 256))
EPSILON, DELTA = 3.0, 1e-6
DEVICE = "cpu"  # the non-private side runs on the CPU too: a GPU would not compare like with like


class TimedSecureRandom(SecureRandom):
    """The production generator (keyed from the OS), counting the CPU time spent drawing normals."""

    def __init__(self) -> None:
        super().__init__()
        self.normal_s = 0.0

    def standard_normal(self, n: int, dtype: type[np.floating] = np.float64) -> npt.NDArray[np.floating]:
        start = time.process_time()
        out = super().standard_normal(n, dtype)
        self.normal_s += time.process_time() - start
        return out


def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, FEATURES, generator=gen)
    w = torch.randn(FEATURES, generator=gen)
    y = (x @ w + 0.5 * torch.randn(ROWS, generator=gen) > 0).long()
    return x, y


def nonprivate_epoch(x: torch.Tensor, y: torch.Tensor) -> float:
    net = build_model(MODEL, FEATURES, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    loader = DataLoader(TensorRows(x, y), batch_size=BATCH, shuffle=True, collate_fn=collate_rows)
    start = time.process_time()
    for xb, yb in loader:
        opt.zero_grad()
        loss_fn(net(xb), yb).backward()
        opt.step()
    return time.process_time() - start


def trainer(x: torch.Tensor, y: torch.Tensor, *, secure: bool, clipping: Any) -> tuple[PrivateTrainer, Any]:
    random = TimedSecureRandom() if secure else None
    t = make_private_trainer(
        build_model(MODEL, FEATURES, 2),
        x,
        y,
        task="classification",
        epochs=1,
        batch_size=BATCH,
        learning_rate=0.1,
        optimizer="sgd",
        max_grad_norm=1.0,
        target_epsilon=EPSILON,
        delta=DELTA,
        steps_per_epoch=STEPS,
        secure_mode=secure,
        secure_random=random,
        noise_generator=None if secure else torch.Generator().manual_seed(1),
        clipping=clipping,
        device=DEVICE,
    )
    return t, random


def private_epoch(
    x: torch.Tensor, y: torch.Tensor, *, secure: bool, clipping: Any
) -> tuple[float, float, float, float]:
    """(setup_s, epoch_s, noise_s, epsilon) of one private epoch (on the CPU, like the non-private side)."""
    start = time.process_time()
    t, random = trainer(x, y, secure=secure, clipping=clipping)
    setup = time.process_time() - start
    start = time.process_time()
    t.run_epoch()
    epoch = time.process_time() - start
    return setup, epoch, (random.normal_s if random else 0.0), t.epsilon()


def draws_per_s(secure: bool, block: int, total: int) -> float:
    """Raw N(0, 1) draws per CPU second: the CSPRNG (float64) or torch's default generator (float32)."""
    random = SecureRandom()
    gen = torch.Generator().manual_seed(2)
    start = time.process_time()
    for _ in range(total // block):
        if secure:
            random.standard_normal(block)
        else:
            torch.randn(block, generator=gen)
    return (total // block) * block / (time.process_time() - start)


def profile(x: torch.Tensor, y: torch.Tensor, clipping: Any) -> None:
    t, _ = trainer(x, y, secure=True, clipping=clipping)
    t.run_epoch()  # warm-up
    prof = cProfile.Profile(timer=time.process_time)
    prof.enable()
    t.run_epoch()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clipping", choices=["bookkeeping", "ghost"], default=CLIPPING_MODE)
    parser.add_argument("--profile", action="store_true", help="cProfile one secure private epoch first")
    args = parser.parse_args()
    # Opacus's RDP helper notes its order grid while the PRV accountant calibrates: not a result.
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = data()
    if args.profile:
        profile(x, y, args.clipping)
    nonprivate_epoch(x, y)  # warm-up (allocator, kernels)
    params = sum(p.numel() for p in build_model(MODEL, FEATURES, 2).parameters())
    nonpriv, priv, dflt, setups, noise, eps = [], [], [], [], [], 0.0
    for i in range(args.repeats):
        nonpriv.append(nonprivate_epoch(x, y))
        setup, epoch, noise_s, eps = private_epoch(x, y, secure=True, clipping=args.clipping)
        priv.append(epoch)
        setups.append(setup)
        noise.append(noise_s / epoch)
        dflt.append(private_epoch(x, y, secure=False, clipping=args.clipping)[1])
        print(
            f"run {i}: nonprivate {nonpriv[-1]:.3f}s private {epoch:.3f}s (noise {noise_s:.3f}s, setup "
            f"{setup:.2f}s) default_rng {dflt[-1]:.3f}s eps {eps:.4f}"
        )
    secure_rate = max(draws_per_s(True, params, STEPS * params) for _ in range(2))
    default_rate = max(draws_per_s(False, params, STEPS * params) for _ in range(2))
    p, n, d = min(priv), min(nonpriv), min(dflt)
    print(
        f"detail: clipping={args.clipping} default_rng_private_s={d:.3f} default_rng_draws_per_s={default_rate:.0f} "
        f"setup_s={min(setups):.2f} threads={args.threads} rows={ROWS} params={params} steps={STEPS} "
        f"noise_values_per_epoch={STEPS * params}"
    )
    print(
        f"BENCH dpsgd private_s={p:.3f} nonprivate_s={n:.3f} ratio={p / n:.2f} secure=1 "
        f"ratio_default_rng={d / n:.2f} noise_draws_per_s={secure_rate:.0f} noise_share={noise[priv.index(p)]:.2f} "
        f"device={DEVICE} epsilon={eps:.4f}"
    )


if __name__ == "__main__":
    main()
