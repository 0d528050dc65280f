"""Opacus 1.6 with the broker's CSPRNG (:mod:`privacy.training.secure_random`): subclasses, never patches.

Opacus's own ``secure_mode`` imports ``torchcsprng`` (no build for torch 2.x) and its ``noise_generator``
must be a ``torch.Generator``, which no external CSPRNG can back. So, with a :class:`SecureRandom`:

* :class:`BrokerDPOptimizerFastGradientClipping` (ghost clipping and the broker's single-backward
  clipping) and :class:`BrokerDPOptimizer` (per-sample-gradient modes) override ``add_noise``: one
  float64 draw per coordinate for the whole step in one call, added and snapped by
  :func:`privacy.training.secure_random.noisy_sum`;
* :class:`SecureDPDataLoader` is a ``DPDataLoader`` whose batch sampler, :class:`SecurePoissonSampler`,
  draws each step's Poisson mask from the same generator;
* :class:`BrokerPrivacyEngine` is a ``PrivacyEngine`` whose ``_prepare_optimizer`` and
  ``_prepare_data_loader`` return those, so ``make_private_with_epsilon`` calibrates and accounts as usual.

Without a :class:`SecureRandom` (``secure_mode=False``: seeded tests and the benchmark's default-RNG
column only) the noise and the masks are stock Opacus: torch's Mersenne Twister, one float32 draw per
coordinate, no floating-point defence (the optimizer classes are the same, so a benchmark compares RNGs).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import create_accountant
from opacus.data_loader import DPDataLoader, dtype_safe, shape_safe, wrap_collate_with_empty
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torch.utils.data._utils.collate import default_collate

from privacy.training.secure_random import SecureRandom, noisy_sum


def add_secure_noise(optimizer: DPOptimizer, random: SecureRandom, noise_multiplier: float) -> None:
    """Set ``p.grad = noisy_sum(p.summed_grad)`` for every parameter, all noise drawn in one call.

    ``std = noise_multiplier · max_grad_norm``, as Opacus; the draw is float64 on the CPU (copied to each
    parameter's device). Marks ``summed_grad`` processed as Opacus does, so a double step is caught.
    """
    params = optimizer.params
    for p in params:
        _check_processed_flag(p.summed_grad)
    std = float(noise_multiplier) * float(optimizer.max_grad_norm)
    sizes = [int(p.summed_grad.numel()) for p in params]
    normals = torch.from_numpy(random.standard_normal(sum(sizes))) if std > 0 else None
    offset = 0
    for p, size in zip(params, sizes, strict=True):
        summed: torch.Tensor = p.summed_grad
        if normals is None:
            p.grad = summed.clone().view_as(p)
        else:
            block = normals[offset : offset + size].view(summed.shape).to(summed.device, non_blocking=True)
            p.grad = noisy_sum(summed, block, std).view_as(p)
        offset += size
        _mark_as_processed(p.summed_grad)


class BrokerDPOptimizer(DPOptimizer):  # type: ignore[misc]
    """Opacus's ``DPOptimizer`` (per-sample gradients, flat clipping) with CSPRNG noise, snapped.

    Without a ``random`` (default-RNG mode: seeded tests, benchmarks) the noise is Opacus's own.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, *, random: SecureRandom | None, **kwargs: Any
    ) -> None:
        super().__init__(optimizer, **kwargs)
        self.secure_random = random

    def add_noise(self) -> None:
        """Noise from the :class:`SecureRandom` (see :func:`add_secure_noise`), not ``torch.normal``."""
        if self.secure_random is None:
            super().add_noise()
        else:
            add_secure_noise(self, self.secure_random, float(self.noise_multiplier))


class BrokerDPOptimizerFastGradientClipping(DPOptimizerFastGradientClipping):  # type: ignore[misc]
    """Opacus's optimizer for already-clipped summed gradients (ghost, book-keeping) with CSPRNG noise.

    Without a ``random`` (default-RNG mode) the noise is Opacus's own.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, *, random: SecureRandom | None, **kwargs: Any
    ) -> None:
        super().__init__(optimizer, **kwargs)
        self.secure_random = random

    def accumulate(self) -> None:
        """As Opacus's (``summed_grad += grad``) with ``clone`` for its ``copy.deepcopy``.

        Opacus deep-copies each gradient through Python's ``copy`` machinery: a fifth of a book-keeping
        step's CPU time on the benchmark's MLP; ``clone`` gives the same tensor.
        """
        for p in self.params:
            if p.summed_grad is not None:
                p.summed_grad.add_(p.grad.detach())
            else:
                p.summed_grad = p.grad.detach().clone()

    def add_noise(self) -> None:
        """Noise from the :class:`SecureRandom`; honours Opacus's adaptive-clipping multiplier if set."""
        if self.secure_random is None:
            super().add_noise()
            return
        adjusted = getattr(self, "_adjusted_noise_multiplier", None)
        multiplier = self.noise_multiplier if adjusted is None else adjusted
        add_secure_noise(self, self.secure_random, float(multiplier))


class SecurePoissonSampler(UniformWithReplacementSampler):  # type: ignore[misc]
    """Poisson sampling (each row independently with ``sample_rate``) with masks from the CSPRNG."""

    def __init__(self, *, num_samples: int, sample_rate: float, random: SecureRandom) -> None:
        super().__init__(num_samples=num_samples, sample_rate=sample_rate, generator=None)
        self.secure_random = random

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            mask = self.secure_random.bernoulli_mask(self.num_samples, self.sample_rate)
            yield np.flatnonzero(mask).tolist()


class SecureDPDataLoader(DPDataLoader):  # type: ignore[misc]
    """A ``DPDataLoader`` whose batch sampler is a :class:`SecurePoissonSampler`.

    ``DPDataLoader.__init__`` hard-wires a torch-generator sampler and ``DataLoader`` forbids replacing a
    batch sampler after construction, so this builds the loader the way ``DPDataLoader`` does (same
    empty-batch collate wrapper, same attributes) with the secure sampler in its place.
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        *,
        sample_rate: float,
        random: SecureRandom,
        collate_fn: Any = None,
        batch_first: bool = True,
        rand_on_empty: bool = False,
        **kwargs: Any,
    ) -> None:
        self.sample_rate = sample_rate
        self.distributed = False
        first = dataset[0]
        DataLoader.__init__(
            self,
            dataset=dataset,
            batch_sampler=SecurePoissonSampler(
                num_samples=len(dataset),  # type: ignore[arg-type]
                sample_rate=sample_rate,
                random=random,
            ),
            collate_fn=wrap_collate_with_empty(
                collate_fn=collate_fn or default_collate,
                batch_first=batch_first,
                rand_on_empty=rand_on_empty,
                sample_empty_shapes=[(0, *shape_safe(x)) for x in first],
                dtypes=[dtype_safe(x) for x in first],
            ),
            **kwargs,
        )

    @classmethod
    def from_loader(
        cls, data_loader: DataLoader[Any], *, random: SecureRandom, batch_first: bool, rand_on_empty: bool
    ) -> SecureDPDataLoader:
        """Like ``DPDataLoader.from_data_loader``: rate ``1 / len(data_loader)``, same dataset and collate."""
        if isinstance(data_loader.dataset, IterableDataset):
            raise ValueError("Poisson sampling is not supported for an IterableDataset")
        return cls(
            data_loader.dataset,
            sample_rate=1 / len(data_loader),
            random=random,
            collate_fn=data_loader.collate_fn,
            batch_first=batch_first,
            rand_on_empty=rand_on_empty,
            pin_memory=data_loader.pin_memory,
        )


class BrokerPrivacyEngine(PrivacyEngine):  # type: ignore[misc]
    """A ``PrivacyEngine`` whose noise and Poisson masks come from ``random`` (stock Opacus without one).

    ``secure_mode`` here means the broker's CSPRNG, not Opacus's: ``PrivacyEngine.__init__`` is not called
    because with ``secure_mode=True`` it imports ``torchcsprng``; this sets the same attributes instead.
    """

    def __init__(self, *, accountant: str, random: SecureRandom | None) -> None:
        if random is None:
            with warnings.catch_warnings():
                # Opacus warns that its secure RNG is off; only seeded tests and benchmarks get here.
                warnings.filterwarnings("ignore", message="Secure RNG turned off")
                super().__init__(accountant=accountant, secure_mode=False)
        else:
            self.accountant = create_accountant(mechanism=accountant)
            self.secure_mode = True  # make_private then refuses a noise_generator (a seed) as Opacus does
            self.secure_rng = None
            self.dataset = None
        self.secure_random = random

    def _prepare_optimizer(self, *, optimizer: torch.optim.Optimizer, **kwargs: Any) -> DPOptimizer:
        if kwargs.pop("distributed", False) or kwargs.pop("clipping", "flat") != "flat":
            raise ValueError("the broker's DP-SGD supports flat clipping on one process only")
        generator = kwargs.pop("noise_generator", None)
        if self.secure_random is not None and generator is not None:
            raise ValueError("a noise generator (a seed) is for tests only: secure mode uses the CSPRNG")
        mode = kwargs.pop("grad_sample_mode", "hooks")
        if isinstance(optimizer, DPOptimizer):
            optimizer = optimizer.original_optimizer
        cls = BrokerDPOptimizerFastGradientClipping if mode == "ghost" else BrokerDPOptimizer
        optim: DPOptimizer = cls(
            optimizer,
            random=self.secure_random,
            generator=generator,
            secure_mode=self.secure_random is not None,
            **kwargs,
        )
        return optim

    def _prepare_data_loader(
        self,
        data_loader: DataLoader[Any],
        *,
        poisson_sampling: bool,
        distributed: bool,
        batch_first: bool = True,
        rand_on_empty: bool = False,
    ) -> DataLoader[Any]:
        if self.secure_random is None:
            loader: DataLoader[Any] = super()._prepare_data_loader(
                data_loader,
                poisson_sampling=poisson_sampling,
                distributed=distributed,
                batch_first=batch_first,
                rand_on_empty=rand_on_empty,
            )
            return loader
        if not poisson_sampling or distributed:
            raise ValueError("the broker's secure DP-SGD needs Poisson sampling on one process")
        return SecureDPDataLoader.from_loader(
            data_loader, random=self.secure_random, batch_first=batch_first, rand_on_empty=rand_on_empty
        )
