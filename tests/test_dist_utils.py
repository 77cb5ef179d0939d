import torch
import torch.distributed as dist

from dist_utils import run_distributed


def _allreduce_rank(rank, world_size):
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    return {"rank": rank, "sum": t.item(), "world": dist.get_world_size()}


def test_two_gloo_processes_see_each_other():
    results = run_distributed(_allreduce_rank, 2)
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["sum"] == 3.0 and r["world"] == 2 for r in results)
