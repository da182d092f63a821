"""How many CPU threads a fit uses, and applying that count to torch and the BLAS pools.

The rule (:func:`choose_threads`), first match wins:

1. ``--threads N`` on the command line (or ``threads: N`` in a config);
2. the environment variable ``OVERPARAM_LIT_THREADS=N``;
3. ``OMP_NUM_THREADS=N`` set by the user (torch reads it too);
4. one thread on a machine with two cores or fewer (the cores this process may run on);
5. otherwise torch's default, but no more than the cores the others leave free: the 1-minute
   load average counts busy cores, ``free = cores - round(load)``; one thread when at most one
   core is free.

A small net's step is too short to split across cores: two threads on two cores gain little
alone and lose several times over beside one other busy process.

Nothing here imports torch, numpy or threadpoolctl at import time.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

ENV = "OVERPARAM_LIT_THREADS"
"""Overrides the automatic choice; the CLI also sets it for the processes it starts (DDP), so
they make the same choice."""

BLAS_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
"""Thread counts read by OpenMP, OpenBLAS and MKL when they load."""


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count and why: ``str()`` reads ``threads 1 (2 cores)``."""

    threads: int
    reason: str

    def __str__(self) -> str:
        return f"threads {self.threads} ({self.reason})"


def _positive(value: object, where: str) -> int:
    from overparam_lit.utils import ConfigError

    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"{where} must be a positive number of threads (got {value!r}). "
                          f"Use e.g. 1, or leave it unset to choose from the cores and the load.")
    return n


def choose_threads(cores: int, load: float | None, env: Mapping[str, str], flag: int | None,
                   torch_default: int) -> ThreadChoice:
    """The thread count of a fit (the rule of this module's docstring); pure.

    Args:
        cores: the cores this process may run on.
        load: the 1-minute load average (``None`` where unknown).
        env: the environment (``OVERPARAM_LIT_THREADS``, ``OMP_NUM_THREADS``).
        flag: ``--threads`` (``None`` when not given).
        torch_default: torch's own count (``torch.get_num_threads()`` before anything set it).
    """
    if flag is not None:
        return ThreadChoice(_positive(flag, "--threads"), "--threads")
    if env.get(ENV, "").strip():
        return ThreadChoice(_positive(env[ENV], ENV), ENV)
    if env.get("OMP_NUM_THREADS", "").strip():
        return ThreadChoice(_positive(env["OMP_NUM_THREADS"], "OMP_NUM_THREADS"), "OMP_NUM_THREADS")
    cores = max(1, int(cores))
    if cores <= 2:
        return ThreadChoice(1, f"{cores} core{'s' if cores > 1 else ''}")
    default = max(1, int(torch_default))
    if load is None:
        return ThreadChoice(default, f"torch default, {cores} cores")
    free = cores - int(round(load))
    if free <= 1:
        return ThreadChoice(1, f"load {load:.1f} on {cores} cores")
    if free < default:
        return ThreadChoice(free, f"load {load:.1f} on {cores} cores")
    return ThreadChoice(default, f"torch default, {cores} cores, load {load:.1f}")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system tells it)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> float | None:
    """The 1-minute load average, or ``None`` where the system has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


_TORCH_DEFAULT: list[int] = []


def torch_default_threads() -> int:
    """torch's thread count as this process first saw it (before :func:`apply_threads`)."""
    if not _TORCH_DEFAULT:
        import torch

        _TORCH_DEFAULT.append(torch.get_num_threads())
    return _TORCH_DEFAULT[0]


def thread_env(n: int, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables that give a new process ``n`` threads (torch and the BLAS pools), leaving
    those already set in ``env`` (default: this process's environment) as they are."""
    env = os.environ if env is None else env
    out = {ENV: str(n)} if not env.get(ENV) else {}
    out.update({k: str(n) for k in BLAS_ENV if not env.get(k)})
    return out


def _openblas_set(n: int) -> int:
    """Set the thread count of every OpenBLAS already loaded (numpy's, scipy's); returns how
    many were set. Linux only; a fallback for when threadpoolctl is not installed."""
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.lower() and "/" in line}
    except OSError:
        return 0
    done = 0
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 4))
        except OSError:
            continue
        for name in ("openblas_set_num_threads", "openblas_set_num_threads64_",
                     "scipy_openblas_set_num_threads", "scipy_openblas_set_num_threads64_"):
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(ctypes.c_int(n))
                done += 1
                break
    return done


_LIMITS: list[object] = []


def limit_blas(n: int, environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Cap numpy's and scipy's BLAS pools at ``n`` threads: through the environment for
    libraries not loaded yet (keys already set are left alone), and through threadpoolctl, or
    OpenBLAS itself, for those already loaded. Returns the environment keys it set."""
    environ = os.environ if environ is None else environ
    set_keys = [k for k in BLAS_ENV if not environ.get(k)]
    for key in set_keys:
        environ[key] = str(n)
    if "numpy" in sys.modules or "scipy" in sys.modules:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            _openblas_set(n)
        else:
            _LIMITS[:] = [threadpool_limits(limits=n)]
    return set_keys


def apply_threads(n: int) -> list[str]:
    """Use ``n`` threads in torch's intra-op pool and cap the BLAS pools (:func:`limit_blas`);
    returns the environment keys it set."""
    import torch

    torch_default_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return limit_blas(n)


__all__ = ["BLAS_ENV", "ENV", "ThreadChoice", "apply_threads", "available_cores", "choose_threads",
           "limit_blas", "load_average", "thread_env", "torch_default_threads"]
