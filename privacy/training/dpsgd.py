"""DP-SGD with Opacus over in-memory tensors: the allow-listed models and one private fit.

Clipping is exact per-sample clipping, by default **book-keeping** (:class:`BookkeepingModule`): one backward
pass gives every linear layer's per-sample output gradients, from which the per-sample norms and the clipped
sum follow directly (no second backward pass, no weight gradients thrown away). Opacus's ``ghost`` mode
(two backward passes) stays selectable. Measured on ``bench/dpsgd.py`` (MLP 100-256-256-2, 50k rows, batch
256, one thread, CPU seconds): ghost 2.6-3.0x a non-private epoch, book-keeping 1.6-1.8x with torch's
generator and 2.0-2.2x with the secure noise (``docs/training.md`` has the profile). Sampling is Poisson
(a ``DPDataLoader``), so the accountant's ε is valid for the run; the accountant is PRV, whose
``get_epsilon`` returns an upper bound.

Randomness: in secure mode (the default) the Gaussian noise and the Poisson masks come from the broker's
AES-128-CTR CSPRNG keyed from the OS (:mod:`privacy.training.secure_random`), plugged into Opacus by the
subclasses of :mod:`privacy.training.dp_opacus`; ``secure_mode=False`` (seeded tests, the benchmark's
default-RNG column) is Opacus's stock torch-generator noise.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from opacus.accountants.utils import get_noise_multiplier
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from privacy.training.dp_opacus import BrokerPrivacyEngine
from privacy.training.secure_random import SecureRandom, secure_random_available
from privacy.training.spec import ModelSpec

ClippingMode = Literal["bookkeeping", "ghost"]
CLIPPING_MODE: ClippingMode = "bookkeeping"
GRAD_SAMPLE_MODE = CLIPPING_MODE  # what a result reports (``TrainingResult.grad_sample_mode``)
ACCOUNTANT = "prv"


@dataclass(frozen=True, slots=True)
class FitOutcome:
    """What a private fit reports: the accountant's ε (an upper bound), steps and noise multiplier."""

    epsilon: float
    steps: int
    noise_multiplier: float


@dataclass(frozen=True, slots=True)
class _Rows:
    """A batch as indices into the tensors; ``len`` is its size (Opacus checks it for empty batches)."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor

    def __len__(self) -> int:
        return int(self.index.numel())


class _PublicLength(Sampler[list[int]]):
    """A batch sampler that only states the number of steps per epoch; Opacus replaces it before use.

    ``make_private_with_epsilon`` takes its sampling rate as ``1 / len(data_loader)``; a plain loader's
    length is ``ceil(n / batch)`` — a function of the private row count. This one's length is public.
    """

    def __init__(self, steps: int) -> None:
        self._steps = steps

    def __len__(self) -> int:
        return self._steps

    def __iter__(self) -> Iterator[list[int]]:
        raise RuntimeError("Opacus replaces this sampler with Poisson sampling; it is never iterated")


class TensorRows(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Like ``TensorDataset`` but a batch is fetched with one gather (torch's ``__getitems__``), not row by row.

    Use with :func:`collate_rows`. Per-row fetching cost as much as a third of a DP-SGD epoch here.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    def __getitems__(self, indices: list[int]) -> _Rows:
        return _Rows(self.x, self.y, torch.as_tensor(indices, dtype=torch.long))


def collate_rows(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather one batch of :class:`TensorRows` into ``(x, y)`` tensors."""
    if not isinstance(batch, _Rows):
        raise TypeError("collate_rows takes the batches of a TensorRows dataset")
    return batch.x[batch.index], batch.y[batch.index]


def secure_mode_available() -> bool:
    """Whether secure mode can run here: the broker's AES-CTR CSPRNG (``randomgen``) works.

    Opacus's own ``secure_mode`` (``torchcsprng``) is never used: see :mod:`privacy.training.dp_opacus`.
    """
    return secure_random_available()


def resolve_device(requested: str = "auto") -> torch.device:
    """The device to train on: ``auto`` (a GPU when torch sees one, else the CPU), ``cpu`` or ``cuda[:N]``.

    An explicit GPU that is not there is refused (``ValueError``) rather than silently run on the CPU.
    """
    name = requested.strip().lower()
    if name == "auto":
        return (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown training device {requested!r}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"unsupported training device {requested!r}: cpu, cuda or auto")
    if not torch.cuda.is_available():
        raise ValueError(f"training device {requested!r} asked for, but torch sees no GPU")
    index = 0 if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise ValueError(f"training device {requested!r}: torch sees {torch.cuda.device_count()} GPU(s)")
    return torch.device("cuda", index)


def build_model(model: ModelSpec, n_features: int, n_outputs: int) -> nn.Sequential:
    """The allow-listed architecture: one linear layer, or Linear+ReLU blocks then a linear head."""
    layers: list[nn.Module] = []
    width = n_features
    for hidden in model.hidden if model.kind == "mlp" else ():
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


class BookkeepingModule(nn.Module):
    """The allow-listed MLP, recording each ``Linear``'s input and output for single-backward clipping.

    Book-keeping clipping (after Bu et al., 2022): one backward pass gives each linear layer's per-sample
    output gradients ``g``; with one row per sample a layer's per-sample gradient is ``gᵢ aᵢᵀ`` (bias:
    ``gᵢ``), so its squared norm is ``‖aᵢ‖²‖gᵢ‖²`` (+ ``‖gᵢ‖²``) and the clipped sum is ``(c ⊙ g)ᵀ a``.
    Exact per-sample clipping, as Opacus's ghost clipping, without its second backward pass — and the
    backward computes input gradients only (no weight gradients that would be thrown away).
    """

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        for layer in net:
            if not isinstance(layer, nn.Linear | nn.ReLU):
                raise TypeError("book-keeping clipping supports Linear and ReLU layers only")
        self.net = net
        self.linears = [layer for layer in net if isinstance(layer, nn.Linear)]
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output; in training with autograd on, also the tensors the clipping needs."""
        record = self.training and torch.is_grad_enabled()
        self.inputs, self.outputs = [], []
        h = x
        for layer in self.net:
            if isinstance(layer, nn.Linear) and record:
                self.inputs.append(h.detach())
                h = layer(h)
                self.outputs.append(h)
            else:
                h = layer(h)
        return h

    def clipped_backward(self, loss_per_sample: torch.Tensor, max_grad_norm: float) -> None:
        """Add ``Σᵢ cᵢ ∇ℓᵢ`` to each parameter's ``.grad``, ``cᵢ = min(1, C / (‖∇ℓᵢ‖ + 10⁻⁶))`` (Opacus's rule)."""
        if len(self.outputs) != len(self.linears):
            raise RuntimeError("clipped_backward needs a training-mode forward pass with autograd on")
        out_grads = torch.autograd.grad(loss_per_sample.sum(), self.outputs)
        batch = loss_per_sample.shape[0]
        squared = torch.zeros(batch, dtype=loss_per_sample.dtype, device=loss_per_sample.device)
        for a, g, layer in zip(self.inputs, out_grads, self.linears, strict=True):
            g_sq = g.square().sum(dim=1)
            squared += a.square().sum(dim=1) * g_sq
            if layer.bias is not None:
                squared += g_sq
        coef = (max_grad_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0)
        for a, g, layer in zip(self.inputs, out_grads, self.linears, strict=True):
            weighted = g * coef.unsqueeze(1)
            _accumulate(layer.weight, weighted.t() @ a)
            if layer.bias is not None:
                _accumulate(layer.bias, weighted.sum(dim=0))
        self.inputs, self.outputs = [], []


def _accumulate(param: torch.Tensor, grad: torch.Tensor) -> None:
    if param.grad is None:
        param.grad = grad
    else:
        param.grad.add_(grad)


class BookkeepingLoss:
    """The criterion for :class:`BookkeepingModule`: ``loss(out, y).backward()`` clips per sample.

    The per-sample loss is the criterion's unreduced loss averaged over everything but the batch axis
    (``MSELoss`` on ``(n, 1)`` outputs gives one value per row). ``backward`` leaves the clipped sum in
    ``.grad``; the DP optimizer then adds the noise and divides by the expected batch size.
    """

    def __init__(self, module: BookkeepingModule, criterion: nn.Module, max_grad_norm: float) -> None:
        unreduced = copy.copy(criterion)
        setattr(unreduced, "reduction", "none")  # noqa: B010  (nn.Module types attributes as tensors)
        self._module, self._criterion, self._max_grad_norm = module, unreduced, float(max_grad_norm)

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> _BookkeepingTensor:
        """Per-sample losses of one batch, wrapped so that ``backward`` clips."""
        per_sample = per_row(self._criterion(output, target))
        return _BookkeepingTensor(self._module, per_sample, self._max_grad_norm)


@dataclass(frozen=True, slots=True)
class _BookkeepingTensor:
    module: BookkeepingModule
    loss_per_sample: torch.Tensor
    max_grad_norm: float

    def backward(self) -> None:
        self.module.clipped_backward(self.loss_per_sample, self.max_grad_norm)

    def detach(self) -> torch.Tensor:
        return self.loss_per_sample.mean().detach()


def per_row(unreduced: torch.Tensor) -> torch.Tensor:
    """One loss per row: an unreduced loss averaged over every axis but the first (empty batches too)."""
    return unreduced if unreduced.dim() == 1 else unreduced.flatten(start_dim=1).mean(dim=1)


class RowMSELoss(nn.MSELoss):
    """``MSELoss`` whose unreduced form is one value per row (the mean over its outputs).

    Opacus's ghost clipping multiplies its ``(n,)`` clipping coefficients into the unreduced loss; torch's
    ``MSELoss`` gives ``(n, 1)`` there, which broadcasts to ``(n, n)`` and yields the *unclipped* gradient
    sum scaled by ``Σc`` — no sensitivity bound at all. Found here in Opacus 1.6 with regression specs;
    ``tests/unit/test_dpsgd_clipping.py`` pins the per-sample clipping of both clipping modes.
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-row mean squared error for ``reduction="none"``, else torch's ``MSELoss``."""
        if self.reduction == "none":
            return per_row(nn.functional.mse_loss(input, target, reduction="none"))
        return super().forward(input, target)


class PrivateTrainer:
    """One private run: model, DP optimizer, clipping loss and Poisson loader, plus the accountant."""

    def __init__(
        self,
        engine: BrokerPrivacyEngine,
        model: Any,
        opt: Any,
        loss: Any,
        loader: Any,
        delta: float,
        device: torch.device,
    ) -> None:
        self._engine, self._model, self._opt, self._loss, self._loader = engine, model, opt, loss, loader
        self._delta, self._device = delta, device

    @property
    def noise_multiplier(self) -> float:
        """The Gaussian noise multiplier calibrated for the target ε."""
        return float(self._opt.noise_multiplier)

    @property
    def device(self) -> torch.device:
        """Where the model and the batches live."""
        return self._device

    def run_epoch(self) -> int:
        """One pass of Poisson-sampled DP-SGD steps; returns how many steps were taken."""
        self._model.train()
        steps = 0
        with warnings.catch_warnings():
            # torch notes that full backward hooks fire on outputs when inputs need no grad: expected here.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for xb, yb in self._loader:
                xb, yb = xb.to(self._device, non_blocking=True), yb.to(self._device, non_blocking=True)
                self._opt.zero_grad()
                loss = self._loss(self._model(xb), yb)
                loss.backward()
                self._opt.step()
                steps += 1
        return steps

    def epsilon(self) -> float:
        """The accountant's ε so far at the run's δ (an upper bound); refuses a non-finite answer."""
        epsilon = float(self._engine.get_epsilon(self._delta))
        if not math.isfinite(epsilon):
            raise ArithmeticError("the accountant returned a non-finite epsilon")
        return epsilon


def make_private_trainer(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    task: Literal["classification", "regression"],
    epochs: int,
    batch_size: int,
    learning_rate: float,
    optimizer: Literal["sgd", "adam"],
    max_grad_norm: float,
    target_epsilon: float,
    delta: float,
    steps_per_epoch: int,
    secure_mode: bool = True,
    noise_generator: torch.Generator | None = None,
    secure_random: SecureRandom | None = None,
    clipping: ClippingMode = CLIPPING_MODE,
    device: str = "auto",
) -> PrivateTrainer:
    """Wrap ``model`` for DP-SGD so that ``epochs`` epochs are (≤ ``target_epsilon``, ``delta``)-DP.

    ``x`` is float32 ``(n, d)``; ``y`` holds class indices (classification) or floats ``(n, 1)``.
    Each step samples every row independently with rate ``1 / steps_per_epoch`` (Poisson); callers derive
    ``steps_per_epoch`` from public or DP facts only (a DP size over ``batch_size``), so the sampling rate,
    the step count and the noise multiplier never depend on the private row count. Gradients are averaged
    over the public ``batch_size``, not over Opacus's ``int(n * rate)``.

    ``secure_mode=True`` (the default) draws noise and masks from a :class:`SecureRandom` keyed from the OS
    (``secure_random`` overrides it with a keyed one: tests only) and takes no ``noise_generator``;
    ``secure_mode=False`` is stock Opacus on torch's generator (seeded tests, benchmarks). ``clipping`` is
    ``bookkeeping`` (one backward pass, the default) or ``ghost`` (Opacus's two). ``device``: see
    :func:`resolve_device`.
    """
    if steps_per_epoch < 1:
        raise ValueError("steps_per_epoch must be >= 1")
    if secure_mode and noise_generator is not None:
        raise ValueError("a noise generator (a seed) is for tests only: secure mode draws from the CSPRNG")
    if not secure_mode and secure_random is not None:
        raise ValueError("secure_random is secure mode's generator")
    target = resolve_device(device)
    model.to(target)
    random = (secure_random or SecureRandom()) if secure_mode else None
    engine = BrokerPrivacyEngine(accountant=ACCOUNTANT, random=random)
    loader = DataLoader(
        TensorRows(x, y), batch_sampler=_PublicLength(steps_per_epoch), collate_fn=collate_rows
    )
    criterion: nn.Module = nn.CrossEntropyLoss() if task == "classification" else RowMSELoss()
    base_opt = _optimizer(model, optimizer, learning_rate)
    if clipping == "ghost":
        private_model, private_opt, private_loss, private_loader = engine.make_private_with_epsilon(
            module=model,
            optimizer=base_opt,
            criterion=criterion,
            data_loader=loader,
            target_epsilon=target_epsilon,
            target_delta=delta,
            epochs=epochs,
            max_grad_norm=max_grad_norm,
            poisson_sampling=True,
            grad_sample_mode="ghost",
            noise_generator=noise_generator,
        )
    else:
        private_model, private_opt, private_loss, private_loader = _bookkeeping(
            engine,
            model,
            base_opt,
            criterion,
            loader,
            target_epsilon,
            delta,
            epochs,
            max_grad_norm,
            noise_generator,
        )
    private_opt.expected_batch_size = batch_size  # Opacus would use int(n * rate): data-dependent
    return PrivateTrainer(engine, private_model, private_opt, private_loss, private_loader, delta, target)


def _bookkeeping(
    engine: BrokerPrivacyEngine,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    criterion: nn.Module,
    loader: DataLoader[Any],
    target_epsilon: float,
    delta: float,
    epochs: int,
    max_grad_norm: float,
    noise_generator: torch.Generator | None,
) -> tuple[BookkeepingModule, Any, BookkeepingLoss, Any]:
    """What ``make_private_with_epsilon`` does, with book-keeping clipping in place of Opacus's hooks.

    Same Poisson loader, the same noise calibration (``get_noise_multiplier`` for the accountant), the
    same DP optimizer class as ghost clipping (it takes clipped summed gradients) and the same accountant
    hook, so the ε reported is computed exactly as before.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError("book-keeping clipping trains the allow-listed Sequential models")
    private_loader = engine._prepare_data_loader(loader, poisson_sampling=True, distributed=False)
    sample_rate = 1 / len(private_loader)
    noise_multiplier = get_noise_multiplier(
        target_epsilon=target_epsilon,
        target_delta=delta,
        sample_rate=sample_rate,
        epochs=epochs,
        accountant=engine.accountant.mechanism(),
    )
    private_opt = engine._prepare_optimizer(
        optimizer=opt,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=1,  # replaced by the public batch size by the caller
        loss_reduction="mean",
        noise_generator=noise_generator,
        grad_sample_mode="ghost",  # the optimizer for already-clipped summed gradients
    )
    private_opt.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    module = BookkeepingModule(model)
    return module, private_opt, BookkeepingLoss(module, criterion, max_grad_norm), private_loader


def fit_private(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    task: Literal["classification", "regression"],
    epochs: int,
    batch_size: int,
    learning_rate: float,
    optimizer: Literal["sgd", "adam"],
    max_grad_norm: float,
    target_epsilon: float,
    delta: float,
    steps_per_epoch: int,
    secure_mode: bool = True,
    noise_generator: torch.Generator | None = None,
    device: str = "auto",
) -> FitOutcome:
    """Train ``model`` in place with DP-SGD for ``epochs`` epochs; see :func:`make_private_trainer`.

    The model is left on the CPU afterwards (the harness evaluates and exports it there), whatever
    device it trained on.
    """
    trainer = make_private_trainer(
        model,
        x,
        y,
        task=task,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        optimizer=optimizer,
        max_grad_norm=max_grad_norm,
        target_epsilon=target_epsilon,
        delta=delta,
        steps_per_epoch=steps_per_epoch,
        secure_mode=secure_mode,
        noise_generator=noise_generator,
        device=device,
    )
    steps = sum(trainer.run_epoch() for _ in range(epochs))
    model.to("cpu")
    return FitOutcome(epsilon=trainer.epsilon(), steps=steps, noise_multiplier=trainer.noise_multiplier)


def _optimizer(model: nn.Module, name: Literal["sgd", "adam"], learning_rate: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=learning_rate)
    return torch.optim.SGD(model.parameters(), lr=learning_rate)
