"""Collectives and the contrastive loss on 2 gloo processes, against one process."""

import pytest
import torch

from ssl_lightning import distributed
from ssl_lightning.losses import nt_xent
from tests.distributed_utils import run_distributed

WORLD = 2


def _full_embeddings() -> torch.Tensor:
    return torch.randn(2, 4 * WORLD, 8, generator=torch.Generator().manual_seed(0))  # [V, R*B, D]


def _gather_rank(rank: int, world_size: int) -> dict:
    x = torch.full((2, 3), float(rank), requires_grad=True)
    gathered = distributed.gather(x)
    # Rank r weighs the gathered rows by (r + 1): rank k's input gets sum_r (r + 1) back.
    (gathered.sum() * (rank + 1)).backward()
    return {
        "gathered": gathered.detach(),
        "grad": x.grad,
        "mean": distributed.all_reduce_mean(torch.tensor([float(rank)])),
    }


@pytest.mark.distributed
def test_gather_concatenates_in_rank_order_and_sums_gradients() -> None:
    results = run_distributed(_gather_rank, WORLD)
    expected = torch.cat([torch.zeros(2, 3), torch.ones(2, 3)])
    for r in results:
        torch.testing.assert_close(r["gathered"], expected)
        torch.testing.assert_close(r["grad"], torch.full((2, 3), 3.0))  # 1 + 2
        torch.testing.assert_close(r["mean"], torch.tensor([0.5]))


def test_collectives_without_process_group_are_identities() -> None:
    x = torch.randn(3, 2)
    assert distributed.gather(x) is x
    assert distributed.all_reduce_mean(x) is x
    assert distributed.world_size() == 1 and distributed.rank() == 0


def _nt_xent_rank(rank: int, world_size: int) -> dict:
    full = _full_embeddings()
    local = full.chunk(world_size, dim=1)[rank].clone().requires_grad_(True)  # [V, B, D]
    loss = nt_xent(local, temperature=0.3, gather_distributed=True)
    loss.backward()
    return {"loss": loss.detach(), "grad": local.grad}


@pytest.mark.distributed
def test_nt_xent_across_ranks_equals_one_process_on_the_whole_batch() -> None:
    results = run_distributed(_nt_xent_rank, WORLD)
    full = _full_embeddings().requires_grad_(True)
    loss = nt_xent(full, temperature=0.3)
    loss.backward()
    assert full.grad is not None
    # DDP averages gradients over ranks; the mean of the rank losses is the 1-process loss.
    ddp_loss = torch.stack([r["loss"] for r in results]).mean()
    torch.testing.assert_close(ddp_loss, loss.detach())
    ddp_grad = torch.cat([r["grad"] for r in results], dim=1) / WORLD
    torch.testing.assert_close(ddp_grad, full.grad)
