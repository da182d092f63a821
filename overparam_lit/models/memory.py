"""Memory estimates of a fit, made on the ``meta`` device before anything is allocated."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

GiB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a fit of ``members`` networks needs, split into parameters (with gradients and two
    optimizer slots, as Adam keeps) and activations of one training batch (forward outputs of
    every layer, kept for the backward pass, and their gradients)."""

    members: int
    params_per_member: int
    activations_per_sample: int
    batch_size: int
    bytes_per_value: int = 4

    @property
    def parameter_bytes(self) -> int:
        """Parameters, gradients and two optimizer states of every member."""
        return 4 * self.members * self.params_per_member * self.bytes_per_value

    @property
    def activation_bytes(self) -> int:
        """Layer outputs and their gradients for one batch of every member."""
        return 2 * self.members * self.activations_per_sample * self.batch_size * self.bytes_per_value

    @property
    def total_bytes(self) -> int:
        """Parameters plus activations."""
        return self.parameter_bytes + self.activation_bytes

    def describe(self) -> str:
        """One line: the total and its parts, in GiB."""
        params = (f"{self.members} member(s) x {self.params_per_member:,} parameters with gradients "
                  f"and optimizer state: {self.parameter_bytes / GiB:.3g} GiB")
        if self.batch_size == 0:
            return f"about {self.total_bytes / GiB:.3g} GiB ({params})"
        return (f"about {self.total_bytes / GiB:.3g} GiB ({params}; activations of a batch of "
                f"{self.batch_size}: {self.activation_bytes / GiB:.3g} GiB)")


def count_activations(template: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Values per sample written by the leaf modules of ``template`` (a ``meta``-device copy is
    run on one ``meta`` sample, so nothing is allocated)."""
    total = 0

    def hook(_m: nn.Module, _inp: object, out: object) -> None:
        nonlocal total
        if torch.is_tensor(out):
            total += out.numel()

    leaves = [m for m in template.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was = template.training
    try:
        template.eval()
        with torch.no_grad():
            template(torch.zeros((1, *input_shape), device="meta"))
    except Exception:  # noqa: BLE001 - a network meta tensors cannot run: estimate parameters only
        total = 0
    finally:
        template.train(was)
        for h in handles:
            h.remove()
    return total


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Free memory of ``device``: CUDA's free memory, else the host's available memory
    (``MemAvailable`` on Linux); ``None`` when it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None
