"""The base every other package stands on: errors, the clock, resource amounts and shared utilities.

Nothing here imports another package of this project, a framework or an I/O library; every package may
import it. Public surface:

- errors: :class:`DomainError` (the root of every refusal) and its generic kinds :class:`NotFound`,
  :class:`Conflict`, :class:`InvalidInput`, :class:`InsufficientFunds`
- clock: :class:`Clock`, :class:`SystemClock`, :class:`FakeClock`
- resources: :class:`Resources` (integer milli-CPU, GPUs, MiB)
- canonical: :func:`canonical_json`, :func:`floats_as_text` (the bytes we hash and sign)
- ids: :func:`new_id`
"""

from common.canonical import canonical_json, floats_as_text
from common.clock import Clock, FakeClock, SystemClock
from common.errors import Conflict, DomainError, InsufficientFunds, InvalidInput, NotFound
from common.ids import new_id
from common.resources import Resources

__all__ = [
    "Clock",
    "Conflict",
    "DomainError",
    "FakeClock",
    "InsufficientFunds",
    "InvalidInput",
    "NotFound",
    "Resources",
    "SystemClock",
    "canonical_json",
    "floats_as_text",
    "new_id",
]
