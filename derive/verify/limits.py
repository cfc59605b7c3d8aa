"""The memory and time limits of a ``verify`` run (``--memory GB``, ``--timeout SECONDS``).

Checks plan their work within :class:`Limits`: a check estimates what it needs and runs on a
smaller batch, fewer channels or a proxy when the full setting does not fit (saying so in its
line). What still runs out is caught per check: :func:`is_out_of_memory` recognizes Python's
``MemoryError`` and torch's allocation failures, and :func:`address_space_limit` turns an
allocation past the budget into such a failure instead of letting the machine swap or the
kernel kill the process. :func:`alarm` interrupts a check that runs past the deadline with
:class:`OutOfTime`; checks not started by then are reported as not run.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import resource
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType

import torch

__all__ = [
    "GIB",
    "Limits",
    "OutOfTime",
    "DeadlineReached",
    "resident_bytes",
    "is_out_of_memory",
    "out_of_memory_detail",
    "memory_text",
    "address_space_limit",
    "alarm",
    "enforced",
    "release_memory",
    "ADDRESS_SLACK",
]

#: one GiB: ``--memory`` counts in these
GIB = 1 << 30


class OutOfTime(Exception):
    """Raised inside a running check when the run's deadline passes (see :func:`alarm`)."""


class DeadlineReached(Exception):
    """Raised before a check would start after the deadline: the rest of its group is not run."""


@dataclass(frozen=True)
class Limits:
    """What a run may use: ``memory`` bytes resident in all (None: no budget) and a
    ``deadline`` on :func:`time.monotonic` after which no check starts (None: none)."""

    memory: int | None = None
    deadline: float | None = None

    @classmethod
    def of(cls, memory_gib: float | None = None, timeout: float | None = None) -> Limits:
        """Limits from ``--memory`` (GiB) and ``--timeout`` (seconds), counted from now."""
        return cls(
            memory=None if memory_gib is None else int(memory_gib * GIB),
            deadline=None if timeout is None else time.monotonic() + timeout,
        )

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return self.deadline is not None and time.monotonic() >= self.deadline

    def available(self) -> int | None:
        """Bytes a check may still allocate: the budget less what the process holds now."""
        if self.memory is None:
            return None
        return max(self.memory - resident_bytes(), 0)

    def fits(self, estimate: int) -> bool:
        """Whether a check estimated to allocate ``estimate`` bytes fits what is available."""
        available = self.available()
        return available is None or estimate <= available

    def budget_text(self) -> str:
        """``--memory 8 GB`` (for messages)."""
        return "no memory budget" if self.memory is None else f"--memory {memory_text(self.memory)}"


def memory_text(size: int | float) -> str:
    """``8 GB``, ``1.3 GB``, ``250 MB``: a byte count in GiB or MiB, for messages."""
    if size >= GIB:
        return f"{size / GIB:.3g} GB"
    return f"{size / (1 << 20):.3g} MB"


def _status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (Linux), or None where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def resident_bytes() -> int:
    """The process's resident set now (``VmRSS``); its peak so far where that is unknown."""
    kib = _status_kib("VmRSS")
    if kib is None:  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS) bounds it
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return kib * 1024


#: what torch's CPU and CUDA allocators say when an allocation fails
_OOM_MESSAGES = ("can't allocate memory", "not enough memory", "out of memory")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure: ``MemoryError``, torch's
    ``OutOfMemoryError``, or a ``RuntimeError`` of its CPU allocator."""
    if isinstance(error, MemoryError | torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in _OOM_MESSAGES)


def out_of_memory_detail(error: BaseException, limits: Limits | None = None) -> str:
    """``out of memory (...)``: what failed, within which budget, with how much in use."""
    message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    if "you tried to allocate" in message:  # torch: "...: you tried to allocate N bytes. ..."
        size = int(message.split("you tried to allocate")[1].split()[0])
        message = f"an allocation of {memory_text(size)} failed"
    budget = "" if limits is None else f"{limits.budget_text()}, "
    return f"out of memory ({message}; {budget}{memory_text(resident_bytes())} in use)"


#: the address-space limit sits this fraction of the budget above it: mapped address space runs
#: ahead of resident memory (allocator arenas, thread stacks, freed pages kept mapped), and the
#: limit is a backstop against swapping, not the budget itself (checks plan within that)
ADDRESS_SLACK = 0.25


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc ``malloc_trim``), so
    that the resident set a check is planned against is what is really in use."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 (glibc only)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


@contextlib.contextmanager
def address_space_limit(limits: Limits) -> Iterator[None]:
    """Within the block, the process may map at most its current address space plus what
    ``limits`` leaves available (``RLIMIT_AS``, soft limit only): an allocation past the
    budget then fails (``MemoryError`` or torch's ``RuntimeError``) instead of swapping or
    waking the kernel's OOM killer. No-op without a memory budget or where the limit cannot
    be set; the previous limit is restored afterwards."""
    available = limits.available()
    mapped = _status_kib("VmSize")
    if available is None or limits.memory is None or mapped is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    wanted = mapped * 1024 + available + int(ADDRESS_SLACK * limits.memory)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))
    except (ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextlib.contextmanager
def alarm(limits: Limits) -> Iterator[None]:
    """Within the block, raise :class:`OutOfTime` in the running code when the deadline
    passes (``SIGALRM``; Python code is interrupted between bytecodes, so a long torch kernel
    finishes first). No-op without a deadline, off the main thread or without ``SIGALRM``."""
    usable = (
        limits.deadline is not None
        and hasattr(signal, "SIGALRM")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return
    assert limits.deadline is not None

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise OutOfTime("--timeout reached")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, max(limits.deadline - time.monotonic(), 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def enforced(limits: Limits) -> Iterator[None]:
    """Both limits at once: :func:`address_space_limit` and :func:`alarm`. torch's thread pool
    is started first, so that no worker thread has to be created (and its stack mapped) under
    the address-space limit."""
    if limits.memory is not None:
        torch.ones(256, 256) @ torch.ones(256, 256)  # starts the intra-op threads
    with address_space_limit(limits), alarm(limits):
        yield
