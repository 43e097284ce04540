"""One rank of the 2-process CPU DistributedDataParallel check in tests/test_ddp.py.

Environment: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (torch's env:// rendezvous, gloo backend). Argv: output folder.
Each rank builds the same PST detection model from the same seed, runs one forward/backward on its own half of the
batch through DDP, and saves the all-reduced gradients and the weights after one SGD step.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist


def main(out: Path):
    from torch.nn.parallel import DistributedDataParallel as DDP

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _ddp_common import build_model, half_batch

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = build_model()
    ddp = DDP(model)  # CPU module: no device_ids
    loss, _ = model.loss(half_batch(rank), ddp(half_batch(rank)["img"]))
    loss.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    torch.save({"grads": grads, "params": sum(p.requires_grad for p in model.parameters()), "weights": {n: p.detach() for n, p in model.named_parameters()}},
               out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
