"""One epoch of DP-SGD through the harness's trainer versus the same model trained non-privately.

MLP 100->256->256->2 on 50,000 generated rows, batch 256, same data, same thread count, same run.
``private_s`` is the epoch through :class:`privacy.training.dpsgd.PrivateTrainer` (Opacus, ghost clipping,
Poisson sampling); ``setup_s`` is the one-off noise calibration (PRV accountant) before it, reported
apart; ``ratio = private_s / nonprivate_s`` takes, for each side, the best of ``--repeats`` interleaved runs.
Times are process CPU seconds (``time.process_time``) with one torch thread: the machine is shared by
several engineers, and CPU time is far less disturbed by their load than wall time; the minimum of the
interleaved runs is the least disturbed measurement. Both sides fetch batches the same
way (one gather per batch, :class:`privacy.training.dpsgd.TensorRows`).

    .venv/bin/python bench/dpsgd.py [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

from privacy.training.dpsgd import (
    GRAD_SAMPLE_MODE,
    TensorRows,
    build_model,
    collate_rows,
    make_private_trainer,
)
from privacy.training.spec import ModelSpec

ROWS, FEATURES, BATCH = 50_000, 100, 256
MODEL = ModelSpec("mlp", (256, 256))
EPSILON, DELTA = 3.0, 1e-6


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


def private_epoch(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    net = build_model(MODEL, FEATURES, 2)
    start = time.process_time()
    trainer = make_private_trainer(
        net,
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
        secure_mode=False,
        steps_per_epoch=round(ROWS / BATCH),  # the harness takes this from a DP count; here it is public
        noise_generator=torch.Generator().manual_seed(1),
    )
    setup = time.process_time() - start
    start = time.process_time()
    trainer.run_epoch()
    epoch = time.process_time() - start
    return setup, epoch, trainer.epsilon()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = data()
    nonprivate_epoch(x, y)  # warm-up (allocator, kernels)
    nonpriv, priv, setups, eps = [], [], [], 0.0
    for i in range(args.repeats):
        nonpriv.append(nonprivate_epoch(x, y))
        setup, epoch, eps = private_epoch(x, y)
        priv.append(epoch)
        setups.append(setup)
        print(
            f"run {i}: nonprivate {nonpriv[-1]:.3f}s private {epoch:.3f}s (setup {setup:.2f}s) eps {eps:.4f}"
        )
    p, n = min(priv), min(nonpriv)
    print(
        f"BENCH dpsgd private_s={p:.3f} nonprivate_s={n:.3f} ratio={p / n:.2f} epsilon={eps:.4f} "
        f"setup_s={min(setups):.2f} grad_sample_mode={GRAD_SAMPLE_MODE} threads={args.threads} rows={ROWS}"
    )


if __name__ == "__main__":
    main()
