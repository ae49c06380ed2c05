"""One training stage over several nodes: each node runs the same `tops train` command, which
relaunches itself under `accelerate launch --num_machines N --machine_rank i --main_process_ip …`.

Who starts the command on each node sets the rank and the rendezvous in the environment: Ray
(tops/flow/ray_cluster.py places one per node), or a user by hand on each host. So there is one
training code path, the same `tops train` runner and Trainer on one process, one node or many.
"""

from __future__ import annotations

import os

from tops.errors import UserError

RANK_ENV = "TOPS_MACHINE_RANK"
IP_ENV = "TOPS_MAIN_PROCESS_IP"
PORT_ENV = "TOPS_MAIN_PROCESS_PORT"
NODES_ENV = "TOPS_RAY_NODES"  # the Ray node ids of the job, rank order (set by the Ray placement)
NODE_ENV = "TOPS_RAY_NODE_ID"  # the Ray node a placed child runs on


def machine_rank() -> int:
    """This node's rank in a multi-node job (0 when it is the only one)."""
    rank = os.environ.get(RANK_ENV, "0")
    return int(rank) if rank.isdigit() else 0


def machine_args(cfg) -> list[str]:
    """`accelerate launch` arguments that join this node to a job over cfg.num_machines nodes."""
    if cfg.num_machines <= 1:
        return []
    missing = [v for v in (RANK_ENV, IP_ENV, PORT_ENV) if not os.environ.get(v)]
    if missing:
        raise UserError(f"train.num_machines is {cfg.num_machines}: run it with flow.runner: ray, or set "
                        f"{', '.join(missing)} on each node (rank 0's address and a free port)")
    rank = machine_rank()
    if not 0 <= rank < cfg.num_machines:
        raise UserError(f"{RANK_ENV} is {os.environ[RANK_ENV]}; train.num_machines is {cfg.num_machines}")
    return ["--num_machines", str(cfg.num_machines), "--machine_rank", str(rank),
            "--main_process_ip", os.environ[IP_ENV], "--main_process_port", os.environ[PORT_ENV]]


def cluster_summary(world_size: int, num_machines: int) -> dict:
    """What train_summary.json says about where the job ran."""
    nodes = [n for n in os.environ.get(NODES_ENV, os.environ.get(NODE_ENV, "")).split(",") if n]
    return {"world_size": int(world_size), "num_machines": int(num_machines),
            "processes_per_node": int(world_size) // max(1, int(num_machines)), "ray_nodes": nodes or None}
