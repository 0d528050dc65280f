"""Resource amounts as exact integers: milli-CPU, whole GPUs and MiB of memory."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of cluster resources. All fields are non-negative integers.

    ``milli_cpu`` is thousandths of a CPU (1500 = 1.5 CPUs), ``gpus`` whole GPUs, ``memory_mib`` MiB.
    """

    milli_cpu: int = 0
    gpus: int = 0
    memory_mib: int = 0

    def __post_init__(self) -> None:
        for name in ("milli_cpu", "gpus", "memory_mib"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.milli_cpu + other.milli_cpu, self.gpus + other.gpus, self.memory_mib + other.memory_mib
        )

    def __sub__(self, other: Resources) -> Resources:
        """Subtract, flooring each field at zero (capacity never goes negative)."""
        return Resources(
            max(0, self.milli_cpu - other.milli_cpu),
            max(0, self.gpus - other.gpus),
            max(0, self.memory_mib - other.memory_mib),
        )

    def fits_in(self, other: Resources) -> bool:
        """True when every field of ``self`` is at most the same field of ``other``."""
        return (
            self.milli_cpu <= other.milli_cpu
            and self.gpus <= other.gpus
            and self.memory_mib <= other.memory_mib
        )

    @property
    def is_zero(self) -> bool:
        """True when no resource is asked for."""
        return self.milli_cpu == 0 and self.gpus == 0 and self.memory_mib == 0


ZERO = Resources()
