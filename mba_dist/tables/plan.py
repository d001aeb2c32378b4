"""How torchrec shards a group's tables over the ranks: the plan, and a printable view of it.

On CPU every table is sharded table-wise (row-wise sharding is not supported on gloo); on GPUs
the planner picks. The plan is computed collectively (`collective_plan`: every rank gets the
same one).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints
from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
from torchrec.distributed.types import ShardingPlan, ShardingType


def sharding_plan(ebc, sharders: list, device: torch.device) -> ShardingPlan:
    """The plan of one EmbeddingBagCollection (built on the meta device) over the world."""
    compute = "cuda" if device.type == "cuda" else "cpu"
    constraints = None
    if compute == "cpu":
        constraints = {name: ParameterConstraints(sharding_types=[ShardingType.TABLE_WISE.value])
                       for name in _table_names(ebc)}
    # The factory resolves the host's memory and bandwidths as a directly built Topology does
    # (the same devices), and is what torchrec asks for (it warns on a direct one).
    topology = TopologyFactory.create_topology(TrainerConfig(world_size=dist.get_world_size()),
                                               kernel_config=KernelConfig(compute_device=compute))
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
    return planner.collective_plan(ebc, sharders, dist.GroupMember.WORLD)


def _table_names(ebc) -> list[str]:
    return [t.name for t in ebc.embedding_bag_configs()]


def describe(plan: ShardingPlan) -> str:
    """One line per table: its sharding type and the ranks that hold it."""
    lines = []
    for module, params in plan.plan.items():
        for name, p in sorted(params.items()):
            ranks = sorted(set(p.ranks or []))
            lines.append(f"{module or 'tables'}.{name}: {p.sharding_type} on ranks {ranks}")
    return "\n".join(lines)
