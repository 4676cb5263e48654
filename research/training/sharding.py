"""One device mesh ('data', 'fsdp') for every run, from 1 CPU to many hosts.

- Parameters (and every optimiser-state leaf shaped like them) are sharded over 'fsdp'
  along their largest dimension divisible by the fsdp size, and replicated otherwise.
- Batches are sharded on their leading (batch) dimension over *both* axes: 'data'
  replicas and 'fsdp' shards each take their own rows, which is how FSDP spends its
  devices (an fsdp shard that repeated its neighbours' rows would do redundant work).
  With fsdp=1 this is plain data parallelism over 'data'.
- The same jitted step runs on 1 device (a 1x1 mesh) and on N; XLA's SPMD partitioner
  inserts the gathers and reductions.
- Multi-host: `maybe_initialize_distributed()` calls `jax.distributed.initialize()`
  when the environment describes a multi-process job. Every process builds the same
  global batch (the iterators are seeded alike) and `shard_batch` places only the rows
  of its own devices, so no host needs to know which rows the others hold.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")

# Variables that mark a multi-process launch (explicit coordinator, SLURM, Open MPI,
# TPU pod slices). A single-process job never sets these with more than one process.
_MULTI_PROCESS_COUNTS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_NUM_PROCESSES")


def multi_host_environment(env: dict[str, str] | None = None) -> bool:
    """True when the environment describes a job with more than one process."""
    env = dict(os.environ if env is None else env)
    if env.get("JAX_COORDINATOR_ADDRESS") or env.get("COORDINATOR_ADDRESS"):
        return True
    if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return True
    for name in _MULTI_PROCESS_COUNTS:
        try:
            if int(env.get(name, "1")) > 1:
                return True
        except ValueError:
            raise ValueError(f"environment variable {name}={env[name]!r} is not an integer")
    return False


def distributed_arguments(env: dict[str, str] | None = None) -> dict[str, Any]:
    """`jax.distributed.initialize` arguments spelled out in the environment (coordinator,
    process count and id). JAX reads the coordinator variable itself but not the other
    two; what is absent is left to its cluster detection (SLURM, Open MPI, TPU pods)."""
    env = dict(os.environ if env is None else env)
    args: dict[str, Any] = {}
    address = env.get("JAX_COORDINATOR_ADDRESS") or env.get("COORDINATOR_ADDRESS")
    if address:
        args["coordinator_address"] = address
    for name, arg in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        if env.get(name):
            try:
                args[arg] = int(env[name])
            except ValueError:
                raise ValueError(f"environment variable {name}={env[name]!r} is not an integer")
    return args


def maybe_initialize_distributed() -> bool:
    """Join the multi-host job if there is one (once); returns whether it is multi-host."""
    if not multi_host_environment():
        return False
    if not jax.distributed.is_initialized():
        jax.distributed.initialize(**distributed_arguments())
    return True


def make_mesh(data: int = -1, fsdp: int = 1, devices: list | None = None) -> Mesh:
    """A ('data', 'fsdp') mesh over all devices; -1 on one axis takes what is left."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise ValueError("at most one mesh axis may be -1")
    if data == -1:
        data = n // fsdp if fsdp > 0 else 0
    if fsdp == -1:
        fsdp = n // data if data > 0 else 0
    if data < 1 or fsdp < 1 or data * fsdp != n:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} does not cover the {n} devices")
    grid = np.asarray(devices, dtype=object).reshape(data, fsdp)
    return Mesh(grid, AXES)


def mesh_from_config(block: Any = None) -> Mesh:
    """The run's mesh from a config's `mesh` block (`data`, `fsdp`; -1 takes the rest);
    without one, data parallelism over all devices (a 1x1 mesh on one CPU)."""
    block = block or {}
    return make_mesh(int(block.get("data", -1)), int(block.get("fsdp", 1)))


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
    """Shard the largest dimension divisible by `fsdp_size` over 'fsdp'; else replicate."""
    if fsdp_size <= 1:
        return P()
    candidates = [(size, -axis) for axis, size in enumerate(shape)
                  if size % fsdp_size == 0 and size >= fsdp_size]
    if not candidates:
        return P()
    _, neg_axis = max(candidates)  # largest; ties go to the earliest axis
    spec = [None] * len(shape)
    spec[-neg_axis] = "fsdp"
    return P(*spec)


def param_shardings(mesh: Mesh, tree: Any) -> Any:
    """NamedShardings for every array leaf of `tree` (params, optimiser state, state)."""
    size = mesh.shape["fsdp"]
    return jax.tree.map(
        lambda x: NamedSharding(mesh, fsdp_spec(tuple(getattr(x, "shape", np.shape(x))), size)),
        tree)


def shard_params(mesh: Mesh, tree: Any) -> Any:
    """Place a pytree of arrays on the mesh with `param_shardings`."""
    return jax.device_put(tree, param_shardings(mesh, tree))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading dimension over ('data', 'fsdp'), the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def shard_batch(mesh: Mesh, batch: dict[str, Any]) -> dict[str, jax.Array]:
    """Put the global host batch on the mesh, its rows split over the batch shards; each
    process fills only its own devices' shards (the same call on 1 and N hosts)."""
    sharding = batch_sharding(mesh)
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    out = {}
    for name, value in batch.items():
        value = np.asarray(value)
        if value.shape[0] % ways:
            raise ValueError(f"batch field {name!r} has {value.shape[0]} rows, not divisible "
                             f"by the {ways} batch shards of the mesh")
        out[name] = jax.make_array_from_callback(value.shape, sharding,
                                                 lambda index, v=value: v[index])
    return out
