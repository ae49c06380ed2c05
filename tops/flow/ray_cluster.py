"""Heavy stages on a Ray cluster (`flow.runner: ray`): Ray decides where a stage's `tops <stage>`
child runs, nothing else. What runs is the very command the thread runner starts on the flow's
node (tops.launch), so each stage keeps one code path; here it starts inside a Ray task that asks
for the stage's resources (CPUs, and GPUs = an engine's tensor-parallel size or a training node's
processes), streams the child's output back line by line, and names the Ray node in the child's
environment (its manifest record says where it ran).

- an engine stage's shards (tops.gpus' plan, here over the cluster: every GPU of every node)
  are one Ray task each, spread over the nodes; their parts merge as on one node;
- a training stage over `train.num_machines` nodes is one STRICT_SPREAD placement group, one task
  per node running the same `tops train` command with its machine rank and rank 0's address in
  the environment (tops/train/nodes.py adds them to its `accelerate launch`).

A lost node fails the stage's task like any crash of its child (exit code 1, one line); the
flow's retry (flow.retries) runs it again, keeping the parts and checkpoints already complete.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tops.errors import UserError
from tops.gpus import EngineGroup, ShardPlan, shard_plan
from tops.launch import PARENT_ENV, TAIL_LINES, Command, Finished, launch
from tops.train.nodes import IP_ENV, NODE_ENV, NODES_ENV, PORT_ENV, RANK_ENV

# The driver's settings a child needs wherever it runs (caches, tokens, logging); never this
# node's device share or process bookkeeping.
_FORWARD_PREFIXES = ("TOPS_", "HF_", "HUGGINGFACE_", "VLLM_", "TRANSFORMERS_", "TOKENIZERS_", "PYTORCH_")
_NOT_FORWARDED = {"VLLM_CPU_OMP_THREADS_BIND", PARENT_ENV, "TOPS_LAUNCHED", "CUDA_VISIBLE_DEVICES",
                  RANK_ENV, IP_ENV, PORT_ENV, NODES_ENV, NODE_ENV}
_DEVICE_SHARE = {"CUDA_VISIBLE_DEVICES", "VLLM_CPU_OMP_THREADS_BIND", "OMP_NUM_THREADS"}
_connect_lock = threading.Lock()


# ---------------------------------------------------------------- the cluster


def connect(cluster) -> None:
    """Join Ray once per process. No address: a fresh local Ray of our own (address "local"), so
    a stale /tmp/ray/ray_current_cluster or another local Ray changes nothing; an address or
    "auto": that cluster, with no resource arguments (its nodes say what they have)."""
    import ray

    with _connect_lock:
        if ray.is_initialized():
            return
        _reachable(cluster.address)
        try:
            if cluster.address is None:
                ray.init(address="local", num_cpus=cluster.num_cpus or os.cpu_count() or 1,
                         include_dashboard=False, log_to_driver=False)
            elif cluster.address.startswith("ray://"):
                ray.init(address=cluster.address)
            else:
                ray.init(address=cluster.address, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
            where = cluster.address or "a local Ray"
            raise UserError(f"cluster.address: cannot connect to {where}: "
                            f"{str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__}") from None


def _reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """A head that does not answer is one line at once (Ray itself retries for minutes)."""
    import socket

    if address is None or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        raise UserError(f"cluster.address: cannot connect to {address}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class Node:
    id: str
    ip: str
    cpus: float
    gpus: int


def nodes() -> list[Node]:
    """The cluster's live nodes (connect first)."""
    import ray

    return [Node(n["NodeID"], n.get("NodeManagerAddress", "?"), float(n["Resources"].get("CPU", 0)),
                 int(n["Resources"].get("GPU", 0))) for n in ray.nodes() if n.get("Alive")]


def _stage_engine(cfg, kind: str):
    return {"seed": cfg.seed.engine, "mask": cfg.mask.judge_engine or cfg.engine}.get(kind, cfg.engine)


@dataclass(frozen=True)
class ClusterPlan(ShardPlan):
    """An engine stage's shards over the cluster: Ray assigns each its GPUs (no pinning here)."""

    nodes: int = 1

    def describe(self) -> str:
        if self.on_gpu:
            return (f"{self.size} engine process(es) x {self.gpus_per_engine} GPU(s), placed by Ray over "
                    f"{self.nodes} node(s)")
        return f"{self.size} engine process(es) on CPUs, spread by Ray over {self.nodes} node(s)"


def cluster_plan(engine, cluster, live: Sequence[Node]) -> ClusterPlan:
    """Engine processes for one sampling stage over `live` nodes: on GPUs, every node's GPUs in
    groups of tensor_parallel_size (an engine group never spans nodes); on CPUs, one per node
    that has cluster.cpus_per_stage CPUs, or engine.data_parallel_size."""
    tp = engine.gpus_per_engine
    on_gpu = tp > 0 and any(n.gpus for n in live)
    if on_gpu:
        fit = sum(n.gpus // tp for n in live)
        if fit == 0:
            raise UserError(f"engine.tensor_parallel_size is {tp} but no node of the cluster has {tp} GPUs "
                            f"(GPUs per node: {', '.join(str(n.gpus) for n in live)})")
        size = engine.data_parallel_size or fit
        if size > fit:
            raise UserError(f"engine.data_parallel_size is {size} but the cluster's GPUs hold only {fit} engine(s) "
                            f"of tensor_parallel_size {tp}")
    else:
        roomy = sum(n.cpus >= cluster.cpus_per_stage for n in live)
        size = 1 if engine.kind == "openai" else engine.data_parallel_size or max(1, roomy)
    return ClusterPlan(tuple(EngineGroup(i) for i in range(size)), on_gpu=on_gpu, gpus_per_engine=tp if on_gpu else 0,
                       nodes=len(live))


def engine_plan(cfg, engine, planning: bool = False) -> ShardPlan:
    """The shard plan of a sampling stage: this node's (tops.gpus), or the cluster's under the Ray
    runner (a plan without a cluster address starts no Ray: it plans this node)."""
    if cfg.flow.runner != "ray" or (planning and cfg.cluster.address is None):
        return shard_plan(engine, planning=planning)
    connect(cfg.cluster)
    return cluster_plan(engine, cfg.cluster, nodes())


def _cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def resources_for(cfg, kind: str) -> dict:
    """What one child of a `tops <kind>` stage asks Ray for."""
    gpus = 0
    if _cluster_has_gpus():
        if kind == "train":
            gpus = cfg.train.num_processes // cfg.train.num_machines
        else:
            gpus = cfg.flow.gpus_per_shard or _stage_engine(cfg, kind).gpus_per_engine
    return {"num_cpus": cfg.cluster.cpus_per_stage, "num_gpus": gpus}


# ---------------------------------------------------------------- running a stage's commands


def place(cfg, kind: str, commands: Sequence[Command], log: Callable[[str, str], None]) -> list[Finished]:
    """Run a heavy stage's child commands to the end: on this node (tops.launch), or under the Ray
    runner each as a Ray task where Ray puts it. Returns how each ended, in order."""
    if cfg.flow.runner != "ray":
        return launch(commands, log)
    connect(cfg.cluster)
    # Ray assigns GPUs (CUDA_VISIBLE_DEVICES in its worker). A share of the flow's node's cores means
    # nothing on another node; a local Ray of our own is this node, so lanes keep their cores there.
    dropped = _DEVICE_SHARE if cfg.cluster.address is not None else {"CUDA_VISIBLE_DEVICES"}
    commands = [Command(c.argv, c.name, {k: v for k, v in c.env.items() if k not in dropped}) for c in commands]
    if kind == "train" and cfg.train.num_machines > 1:
        [command] = commands
        return [_train_across_nodes(cfg, command, log)]
    request = resources_for(cfg, kind)
    spread = {"scheduling_strategy": "SPREAD"} if len(commands) > 1 else {}
    return _run_remote(commands, [{**request, **spread}] * len(commands), log)


def _forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(_FORWARD_PREFIXES) and k not in _NOT_FORWARDED}


def _run_remote(commands: list[Command], options: list[dict], log: Callable[[str, str], None],
                all_or_nothing: bool = False) -> list[Finished]:
    """Each command in a Ray task with its options; a failed one stops the rest when
    `all_or_nothing` (the ranks of one training job). Whatever stops the wait cancels them all."""
    import ray

    remote = ray.remote(max_retries=0)(_run_on_node)
    env, cwd = _forwarded_env(), os.getcwd()
    runs = [remote.options(**opts).remote(c.argv, c.name, {**env, **c.env}, cwd)
            for c, opts in zip(commands, options, strict=True)]
    results: list[Finished | None] = [None] * len(runs)

    def cancel_all() -> None:
        for run in runs:
            try:
                ray.cancel(run, force=True)
            except Exception:  # already finished
                pass

    def follow(i: int) -> None:
        results[i] = _follow(runs[i], commands[i].name, log)
        if all_or_nothing and results[i].returncode != 0:
            cancel_all()

    threads = [threading.Thread(target=follow, args=(i,), daemon=True) for i in range(len(runs))]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
    except BaseException:
        cancel_all()
        raise
    return [r if r is not None else Finished(c.name, 1, ["error: no result from its Ray task"], 0.0)
            for r, c in zip(results, commands, strict=True)]


def _follow(run, name: str, log: Callable[[str, str], None]) -> Finished:
    """Stream one placed child's output into `log`; its Finished, or a lost node as exit code 1."""
    import ray

    tail: deque = deque(maxlen=TAIL_LINES)
    started, done = time.perf_counter(), None
    try:
        for ref in run:  # to its end, so the task has finished when this returns
            item = ray.get(ref)
            if item[0] == "done":
                done = Finished(name, item[2], list(tail), item[3])
                continue
            for line in item[1]:
                tail.append(line)
                try:
                    log(name, line)
                except Exception:  # a broken log sink must not stop the stream
                    pass
    except ray.exceptions.RayError as exc:
        if done is None:
            tail.append(f"error: {name}: its Ray task or node was lost ({exc.__class__.__name__})")
    return done or Finished(name, 1, list(tail), time.perf_counter() - started)


def _run_on_node(argv: list[str], name: str, env: dict[str, str], cwd: str):
    """The Ray task: the child command on this node (tops.launch: its own process group, killed
    with this worker), its output yielded in batches, then ("done", node, exit code, seconds)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    lines: queue.Queue = queue.Queue()
    box: dict = {}

    def work() -> None:
        try:
            # A plain child, not one forked by a zygote: a Ray worker runs one stage, so a zygote
            # would import as much as the child it saves, and outlive the worker when a node goes.
            [box["done"]] = launch([Command(argv, name, env={**env, NODE_ENV: node, "TOPS_ZYGOTE": "0"})],
                                   log=lambda _who, line: lines.put(line))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the task below
            box["error"] = exc
        finally:
            lines.put(None)

    if os.path.isdir(cwd):  # relative paths in the command mean what they meant to the driver
        os.chdir(cwd)
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    ended = False
    while not ended:
        batch, item = [], lines.get()
        while True:
            if item is None:
                ended = True
                break
            batch.append(item)
            if len(batch) >= 200:
                break
            try:
                item = lines.get(timeout=0.2)
            except queue.Empty:
                break
        if batch:
            yield ("lines", batch)
    thread.join()
    if "error" in box:
        raise box["error"]
    yield ("done", node, box["done"].returncode, box["done"].seconds)


# ---------------------------------------------------------------- training over several nodes


def _rendezvous() -> tuple[str, int]:
    """On rank 0's node: its address and a free port for torch.distributed's store."""
    import socket

    import ray

    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    return ray.util.get_node_ip_address(), port


def _train_across_nodes(cfg, command: Command, log: Callable[[str, str], None]) -> Finished:
    """One job over train.num_machines nodes: a STRICT_SPREAD placement group (one bundle per
    node: its CPUs and GPUs), one task per bundle running `command` with its machine rank."""
    import ray
    from ray.util.placement_group import (
        placement_group,
        placement_group_table,
        remove_placement_group,
    )
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    machines = cfg.train.num_machines
    request = resources_for(cfg, "train")
    bundle = {"CPU": request["num_cpus"], **({"GPU": request["num_gpus"]} if request["num_gpus"] else {})}
    group = placement_group([dict(bundle) for _ in range(machines)], strategy="STRICT_SPREAD")
    try:
        if not group.wait(timeout_seconds=cfg.cluster.placement_timeout_s):
            live = nodes()
            return Finished(command.name, 1, [
                f"error: train.num_machines is {machines}: the cluster did not give {machines} distinct nodes "
                f"with {bundle} each within {cfg.cluster.placement_timeout_s:.0f} s (live nodes: {len(live)}, "
                f"GPUs per node: {', '.join(str(n.gpus) for n in live)})"], 0.0)
        placed = placement_group_table(group)["bundles_to_node_id"]
        ids = [placed[i] for i in range(machines)]

        def at(i: int) -> PlacementGroupSchedulingStrategy:
            return PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=i)

        ip, port = ray.get(ray.remote(_rendezvous).options(num_cpus=0, scheduling_strategy=at(0)).remote())
        shared = {**command.env, NODES_ENV: ",".join(ids), IP_ENV: ip, PORT_ENV: str(port)}
        commands = [Command(command.argv, f"{command.name}[node {i}]", {**shared, RANK_ENV: str(i)})
                    for i in range(machines)]
        options = [{"num_cpus": bundle["CPU"], "num_gpus": bundle.get("GPU", 0), "scheduling_strategy": at(i)}
                   for i in range(machines)]
        finished = _run_remote(commands, options, log, all_or_nothing=True)
    finally:
        remove_placement_group(group)
    failed = [f for f in finished if f.returncode != 0]
    first = failed[0] if failed else finished[0]
    return Finished(command.name, first.returncode, first.tail, max(f.seconds for f in finished))


# ---------------------------------------------------------------- the dry run


def describe_cluster(cfg) -> str | None:
    """The dry run's first lines under the Ray runner with an address: nodes and their GPUs."""
    if cfg.flow.runner != "ray" or cfg.cluster.address is None:
        return None
    connect(cfg.cluster)
    live = nodes()
    lines = [f"Ray cluster {cfg.cluster.address}: {len(live)} node{'s' if len(live) != 1 else ''}, "
             f"{sum(n.gpus for n in live)} GPU(s), {sum(n.cpus for n in live):g} CPU(s)"]
    lines += [f"  node {n.id[:12]} ({n.ip}): {n.gpus} GPU(s), {n.cpus:g} CPU(s)" for n in live]
    return "\n".join(lines)


def annotate_step(step, cfg, kind: str, plan: ShardPlan | None) -> None:
    """A dry-run step under the Ray runner with an address: its workers, nodes and GPUs on the
    cluster, and a warning when the cluster cannot hold it."""
    if cfg.flow.runner != "ray" or cfg.cluster.address is None:
        return
    connect(cfg.cluster)
    live = nodes()
    if kind == "train":
        machines, per = cfg.train.num_machines, cfg.train.num_processes // cfg.train.num_machines
        gpus = per if any(n.gpus for n in live) else 0
        step.processes, step.gpus = cfg.train.num_processes, gpus * machines
        step.notes.append(f"Ray: {machines} worker(s) on {machines} node(s) (STRICT_SPREAD), {per} process(es) and "
                          f"{gpus} GPU(s) per node")
        roomy = sum(n.gpus >= gpus and n.cpus >= cfg.cluster.cpus_per_stage for n in live)
        if roomy < machines and not step.warning:
            step.warning = (f"{step.name} will not fit: it needs {machines} node(s) with {gpus} GPU(s) each; "
                            f"the cluster has {roomy}")
        return
    size = plan.size if plan is not None else 1
    request = resources_for(cfg, kind)
    step.notes.append(f"Ray: {size} worker(s) over up to {min(size, len(live))} node(s), "
                      f"{request['num_gpus']:g} GPU(s) and {request['num_cpus']:g} CPU(s) each")
