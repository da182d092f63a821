"""Hessian-vector products of a mean loss over a fixed probe set.

The operator :class:`HessianOperator` maps a flat vector ``v`` (over a chosen subset of the
parameters) to ``H v``, where ``H`` is the Hessian of the sample-weighted mean loss over the
probe set. It never touches ``.grad`` nor the module's own parameter tensors: every product
is computed on detached copies through ``torch.func.functional_call``.

* ``method="auto"`` (default): the cached reverse-over-reverse graph when ``cache`` is on
  (cheapest: one gradient graph reused by every product), else forward-over-reverse ``jvp``
  (no retained graph: the memory-bound choice for chunked probe sets).
* ``method="jvp"``: forward-over-reverse, ``jvp(grad(loss))`` with ``torch.func``.
  With ``cache`` on, ``torch.func.linearize`` traces it once per chunk so that each product
  reuses the forward and backward passes (about 1.3 gradients per product instead of 2.6,
  after a one-off trace of about 50 products' time).
* ``method="double_backward"``: reverse-over-reverse with ``torch.autograd.grad`` (fallback
  for modules that ``torch.func`` cannot transform; taken automatically if ``jvp`` fails).
  With ``cache`` on, the graph of the gradient is kept and reused.

Large probe sets are cut into chunks; chunk products are weighted by their sample counts.
Under ``torch.distributed`` (when initialised and ``distributed=True``) each rank passes its
own shard, and the weighted sums and sample counts are all-reduced, so every rank gets the
Hessian of the mean loss over the union of the shards.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, linearize

from overparam_lit import stopping
from overparam_lit.utils import ConfigError, check

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class _Block:
    """One active parameter: its name, shape, and the flat indices that the subset keeps."""

    name: str
    shape: torch.Size
    numel: int
    index: Tensor | None  # kept entries of the flattened parameter; None keeps all

    @property
    def size(self) -> int:
        return self.numel if self.index is None else int(self.index.numel())


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def pruning_masks_from_module(model: nn.Module) -> dict[str, Tensor]:
    """Masks of ``torch.nn.utils.prune``: ``{'layer.weight_orig': layer.weight_mask}``."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    masks = {}
    for name in params:
        if name.endswith("_orig") and name[: -len("_orig")] + "_mask" in buffers:
            masks[name] = buffers[name[: -len("_orig")] + "_mask"]
    return masks


class HessianOperator:
    """``v -> H v`` for the Hessian of a mean loss over a fixed probe set.

    Args:
        model: the network; called as ``model(x)``. Its parameters and buffers are read,
            never written (in training mode, BatchNorm statistics update copies).
        loss_fn: ``loss_fn(outputs, targets)`` returning the scalar *mean* loss of a batch.
        inputs: probe inputs ``(N, ...)`` held by this process.
        targets: probe targets ``(N, ...)``.
        params: names of the parameters that span the subspace (``None``: every parameter
            with ``requires_grad``). See :func:`layer_subsets` for per-layer groups.
        masks: optional ``{name: 0/1 tensor}``; a masked parameter contributes only its
            entries where the mask is 1 (unpruned weights). Masks of ``torch.nn.utils.prune``
            are picked up automatically.
        chunk_size: samples per chunk (memory bound); ``None`` uses the whole set at once.
        method: ``"auto"``, ``"jvp"`` (forward-over-reverse) or ``"double_backward"``.
        dtype: floating dtype of the computation (default float32; float64 for tests).
        cache: keep each chunk's linearised gradient (memory of about one training step on
            the chunk, per chunk) and reuse it across products; ``None`` caches when the probe
            set is a single chunk.
        distributed: all-reduce over ``torch.distributed`` ranks when it is initialised.
        buffers: the buffers to use (default: the model's own); a probe under DDP passes rank 0's
            BatchNorm statistics here so that every rank differentiates the same network.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        inputs: Tensor,
        targets: Tensor,
        params: Sequence[str] | None = None,
        masks: Mapping[str, Tensor] | None = None,
        chunk_size: int | None = None,
        method: str = "auto",
        dtype: torch.dtype = torch.float32,
        cache: bool | None = None,
        distributed: bool = True,
        buffers: Mapping[str, Tensor] | None = None,
    ) -> None:
        check(method in ("auto", "jvp", "double_backward"), "unknown HVP method", method,
              "Use 'auto', 'jvp' (forward-over-reverse) or 'double_backward'.")
        check(inputs.shape[0] == targets.shape[0], "inputs and targets differ in length",
              (inputs.shape[0], targets.shape[0]), "Pass one target per probe sample.")
        check(chunk_size is None or chunk_size >= 1, "chunk_size must be >= 1", chunk_size,
              "Pass a positive number of samples per chunk, or None.")
        self.model, self.loss_fn, self.method, self.dtype = model, loss_fn, method, dtype
        self.distributed = distributed and _dist_ready()
        device = next(iter(model.parameters())).device
        self.device = device
        self.inputs = inputs.to(device)
        if self.inputs.is_floating_point():
            self.inputs = self.inputs.to(dtype)
        self.targets = targets.to(device)
        if self.targets.is_floating_point():
            self.targets = self.targets.to(dtype)
        n_local = int(self.inputs.shape[0])
        self.chunk_size = chunk_size or max(n_local, 1)
        n_total = torch.tensor(float(n_local), dtype=torch.float64, device=device)
        if self.distributed:
            torch.distributed.all_reduce(n_total)
        self.num_samples = int(n_total.item())
        check(self.num_samples > 0, "the probe set is empty", n_local,
              "Give the Hessian probe at least one sample (probe_size >= 1).")

        named = dict(model.named_parameters())
        if params is None:
            params = [n for n, p in named.items() if p.requires_grad]
        unknown = [n for n in params if n not in named]
        check(not unknown, "unknown parameter names in the Hessian subset", unknown,
              f"Choose among {list(named)[:8]}{'...' if len(named) > 8 else ''}.")
        check(len(params) > 0, "the Hessian parameter subset is empty", list(params),
              "Select at least one parameter.")
        all_masks = dict(pruning_masks_from_module(model))
        all_masks.update(masks or {})
        unknown = [n for n in all_masks if n not in named]
        check(not unknown, "masks name parameters the model does not have", unknown,
              "Key masks by the names of model.named_parameters().")
        self.blocks: list[_Block] = []
        for n in params:
            p = named[n]
            index = None
            if n in all_masks:
                m = all_masks[n]
                check(tuple(m.shape) == tuple(p.shape), f"mask of {n} has the wrong shape",
                      tuple(m.shape), f"Use a 0/1 tensor of shape {tuple(p.shape)}.")
                index = torch.nonzero(m.detach().reshape(-1).to(device) != 0).reshape(-1)
            self.blocks.append(_Block(n, p.shape, p.numel(), index))
        self.dim = sum(b.size for b in self.blocks)
        check(self.dim > 0, "the Hessian subspace has no free entries (all masked)", self.dim,
              "Select parameters with unpruned entries.")
        active = [b.name for b in self.blocks]
        self._active = {n: named[n].detach().to(dtype) for n in active}
        self._frozen = {n: p.detach().to(dtype) if p.is_floating_point() else p.detach()
                        for n, p in named.items() if n not in active}
        own = dict(model.named_buffers()) if buffers is None else dict(buffers)
        self._buffers = {n: b.detach().to(dtype) if b.is_floating_point() else b.detach()
                         for n, b in own.items()}
        self.num_hvps = 0
        n_chunks = -(-n_local // self.chunk_size)
        self.cache = n_chunks <= 1 if cache is None else bool(cache)
        self._cached: dict[int, object] = {}
        if method == "auto":
            self.method = "double_backward" if self.cache else "jvp"
        self._check_scalar_loss()

    # ---- layout ---------------------------------------------------------------------------
    def unflatten(self, v: Tensor) -> dict[str, Tensor]:
        """Flat subspace vector -> ``{name: tensor of the parameter's shape}`` (zeros off mask)."""
        out, i = {}, 0
        for b in self.blocks:
            seg = v[i : i + b.size]
            i += b.size
            if b.index is None:
                out[b.name] = seg.reshape(b.shape)
            else:
                full = torch.zeros(b.numel, dtype=v.dtype, device=v.device)
                out[b.name] = full.index_copy(0, b.index, seg).reshape(b.shape)
        return out

    def flatten(self, tensors: Mapping[str, Tensor]) -> Tensor:
        """``{name: tensor}`` -> flat subspace vector (masked entries dropped)."""
        segs = []
        for b in self.blocks:
            t = tensors[b.name].reshape(-1)
            segs.append(t if b.index is None else t.index_select(0, b.index))
        return torch.cat(segs)

    # ---- the loss ----------------------------------------------------------------------------
    def _chunks(self):
        n = self.inputs.shape[0]
        for s in range(0, n, self.chunk_size):
            yield self.inputs[s : s + self.chunk_size], self.targets[s : s + self.chunk_size]

    def _loss(self, active: Mapping[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        # copies of buffers: a module in training mode updates copies, never the real ones
        buffers = {k: b.clone() for k, b in self._buffers.items()} if self.model.training \
            else self._buffers
        out = functional_call(self.model, {**self._frozen, **buffers, **active}, (x,))
        return self.loss_fn(out, y)

    def _check_scalar_loss(self) -> None:
        if self.inputs.shape[0] == 0:
            return
        x, y = next(self._chunks())
        with torch.no_grad():
            loss = self._loss(self._active, x[:2], y[:2])
        if not (torch.is_tensor(loss) and loss.ndim == 0):
            raise ConfigError(
                f"the loss must be a scalar mean over the batch (got a tensor of shape "
                f"{tuple(torch.as_tensor(loss).shape)}). Reduce it with .mean() (reduction='mean')."
            )

    def _reduce(self, total: Tensor) -> Tensor:
        if self.distributed:
            torch.distributed.all_reduce(total)
        return total / self.num_samples

    # ---- products -------------------------------------------------------------------------
    def loss_and_gradient(self) -> tuple[float, Tensor]:
        """Mean loss and its flat gradient over the probe set (over all ranks)."""
        total = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        with torch.enable_grad():
            for x, y in self._chunks():
                leaves = {k: t.clone().requires_grad_(True) for k, t in self._active.items()}
                loss = self._loss(leaves, x, y)
                g = torch.autograd.grad(loss, list(leaves.values()))
                total += x.shape[0] * self.flatten(dict(zip(leaves, g, strict=True)))
                loss_sum += x.shape[0] * loss.detach().double()
        if self.distributed:
            torch.distributed.all_reduce(loss_sum)
        return float(loss_sum.item()) / self.num_samples, self._reduce(total)

    def _hvp_chunk(self, i: int, tangent: dict[str, Tensor], x: Tensor, y: Tensor
                   ) -> dict[str, Tensor]:
        if self.method == "jvp":
            g = grad(lambda a: self._loss(a, x, y))
            if not self.cache:
                return jvp(g, (self._active,), (tangent,))[1]
            if i not in self._cached:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self._cached[i] = linearize(g, self._active)[1]
            return self._cached[i](tangent)  # type: ignore[operator]
        names = list(self._active)
        if self.cache and i in self._cached:
            leaves, gs = self._cached[i]  # type: ignore[misc]
        else:
            leaves = {k: t.clone().requires_grad_(True) for k, t in self._active.items()}
            loss = self._loss(leaves, x, y)
            gs = torch.autograd.grad(loss, [leaves[k] for k in names], create_graph=True)
            if self.cache:
                self._cached[i] = (leaves, gs)
        hv = torch.autograd.grad(gs, [leaves[k] for k in names],
                                 grad_outputs=[tangent[k] for k in names],
                                 retain_graph=self.cache, allow_unused=True)
        return {k: torch.zeros_like(leaves[k]) if h is None else h
                for k, h in zip(names, hv, strict=True)}

    def _products(self, tangent: dict[str, Tensor]) -> Tensor:
        total = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        with torch.enable_grad():
            for i, (x, y) in enumerate(self._chunks()):
                total += x.shape[0] * self.flatten(self._hvp_chunk(i, tangent, x, y))
        return total

    def matvec(self, v: Tensor) -> Tensor:
        """``H v`` for a flat vector ``v`` of length :attr:`dim`."""
        check(v.shape == (self.dim,), "HVP vector has the wrong shape", tuple(v.shape),
              f"Pass a flat vector of length {self.dim}.")
        stopping.check()  # a stop signal does not wait for the rest of a probe
        v = v.to(device=self.device, dtype=self.dtype)
        tangent = self.unflatten(v)
        try:
            total = self._products(tangent)
        except (RuntimeError, NotImplementedError) as err:
            if self.method != "jvp" or self.num_hvps > 0:
                raise
            warnings.warn(f"torch.func could not transform the model ({err}); falling back "
                          "to double backward for Hessian-vector products.", stacklevel=2)
            self.method, self._cached = "double_backward", {}
            total = self._products(tangent)
        self.num_hvps += 1
        return self._reduce(total)

    __call__ = matvec

    def dense(self) -> Tensor:
        """The full ``dim x dim`` Hessian, one column per HVP (small subspaces only)."""
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        cols = [self.matvec(eye[i]) for i in range(self.dim)]
        return torch.stack(cols, dim=1)


def layer_subsets(model: nn.Module, only_trainable: bool = True) -> dict[str, list[str]]:
    """Parameter names grouped by the module that owns them: ``{'0': ['0.weight', '0.bias']}``."""
    groups: dict[str, list[str]] = {}
    for name, p in model.named_parameters():
        if only_trainable and not p.requires_grad:
            continue
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        groups.setdefault(owner, []).append(name)
    return groups
