"""One process (gloo, world size 1): a DDP forward that runs a prepared backward of its own before
DDP's, as a call of several optimizer steps does; argv[1] == "1" settles the buckets in between
(used by tests/unit/test_compat.py: without it the next iteration fails inside DDP's reducer)."""

import socket
import sys

import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import prepare_for_backward
from torch.nn.parallel import DistributedDataParallel

from overparam_lit.compat import settle_ddp_buckets


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(3, 4), torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, inner: bool = False) -> torch.Tensor:
        if inner:
            loss = self.b(self.a(x)).sum()
            prepare_for_backward(ddp, loss)
            loss.backward()
            if sys.argv[1] == "1":
                settle_ddp_buckets(ddp)
        return self.b(self.a(x))


if __name__ == "__main__":
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    ddp = DistributedDataParallel(Net())
    x = torch.randn(5, 3)
    ddp(x, inner=True).sum().backward()  # first iteration: two backward passes
    ddp(x).sum().backward()  # the buckets are rebuilt here
    dist.destroy_process_group()
