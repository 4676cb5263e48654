"""Sharding: 8 host devices give the 1-device losses; parameter specs; multi-host detection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from research.training.sharding import fsdp_spec, make_mesh, multi_host_environment

ROOT = Path(__file__).resolve().parents[1]

# Runs the same training code on a given mesh and prints the per-step losses as JSON;
# the batches carry loss_rows, as the pipeline's do.
SCRIPT = """
import json, sys
import jax, jax.numpy as jnp, ml_collections
from research.data.batches import with_loss_rows
from research.training.optim import make_optimizer
from research.training.sharding import make_mesh, param_shardings, shard_batch, shard_params
from research.training.state import init_train_state, split_model
from research.training.steps import make_sft_step
from tests.test_training_fixtures import make_batch, tiny_model

def run(data, fsdp):
    mesh = make_mesh(data, fsdp, devices=jax.devices()[: data * fsdp])
    graphdef, params, frozen = split_model(tiny_model(lora=False), "full")
    opt = make_optimizer(ml_collections.ConfigDict(dict(
        name="adamw", lr=1e-2, schedule="cosine", warmup_steps=1, total_steps=3,
        weight_decay=0.1)))
    state = shard_params(mesh, init_train_state(params, opt, seed=0))
    frozen = shard_params(mesh, frozen)
    step = make_sft_step(graphdef, opt, accum_steps=2,
                         state_shardings=param_shardings(mesh, state))
    losses, tokens = [], []
    for s in range(3):
        batch = with_loss_rows(make_batch(rows=16, length=40, seed=s))
        state, metrics = step(state, frozen, shard_batch(mesh, batch))
        losses.append(float(metrics["loss"]))
        tokens.append(float(metrics["tokens"]))
    spec = state.params["layers"][0]["w_up"][...].sharding.spec
    return {"losses": losses, "tokens": tokens, "w_up_spec": [str(a) for a in spec],
            "devices": len(state.params["layers"][0]["w_up"][...].sharding.device_set)}

print(json.dumps({f"{d}x{f}": run(d, f) for d, f in json.loads(sys.argv[1])}))
"""


# The same, launched as one process of a multi-process job (joined through
# maybe_initialize_distributed from the JAX_* variables).
PROCESS_SCRIPT = """
import json, sys
from research.training.sharding import maybe_initialize_distributed
assert maybe_initialize_distributed()
""" + SCRIPT.replace("print(json.dumps(", "import jax\nprint(json.dumps([jax.process_count(), ").replace(
    "json.loads(sys.argv[1])}))", "json.loads(sys.argv[1])}]))")


def _run(meshes: list[tuple[int, int]], devices: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(meshes)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def eight_device_runs() -> dict:
    """One process with 8 host devices: a 1-device mesh and a 2 (data) x 4 (fsdp) mesh."""
    return _run([(1, 1), (2, 4)], devices=8)


def test_eight_devices_give_the_one_device_losses(eight_device_runs):
    single, many = eight_device_runs["1x1"], eight_device_runs["2x4"]
    assert single["devices"] == 1 and many["devices"] == 8
    assert many["w_up_spec"] == ["None", "fsdp"]  # layer 0's [D, F=64]: F is largest
    np.testing.assert_allclose(many["losses"], single["losses"], rtol=1e-5)
    assert single["losses"][0] != single["losses"][-1]  # the run really trains


def test_two_processes_give_the_one_process_losses(eight_device_runs):
    """Two processes of 4 host devices each (one 'host' per process, gloo collectives)
    train on one 2 (data) x 4 (fsdp) mesh: every process feeds the same global batch and
    `shard_batch` places its own rows; the losses equal one 8-device process's."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = []
    for pid in range(2):
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
                   JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
                   JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(pid))
        procs.append(subprocess.Popen([sys.executable, "-c", PROCESS_SCRIPT, "[[2, 4]]"],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    reference = eight_device_runs["2x4"]
    for out, _ in outputs:
        count, runs = json.loads(out.strip().splitlines()[-1])
        assert count == 2 and runs["2x4"]["devices"] == 8
        np.testing.assert_allclose(runs["2x4"]["losses"], reference["losses"], rtol=1e-5)
        assert runs["2x4"]["tokens"] == reference["tokens"]  # each row once, not per host


def test_fsdp_spec_takes_the_largest_divisible_dimension():
    assert fsdp_spec((30, 576, 1536), 4) == P(None, None, "fsdp")
    assert fsdp_spec((49152, 576), 8) == P("fsdp", None)
    assert fsdp_spec((30, 9, 7), 4) == P()          # nothing divisible: replicate
    assert fsdp_spec((2,), 8) == P()                # smaller than the axis: replicate
    assert fsdp_spec((), 4) == P()
    assert fsdp_spec((30, 576), 1) == P()


def test_mesh_shapes_and_errors():
    n = len(jax.devices())
    assert make_mesh().shape == {"data": n, "fsdp": 1}
    assert make_mesh(fsdp=-1, data=1).shape == {"data": 1, "fsdp": n}
    with pytest.raises(ValueError, match="does not cover"):
        make_mesh(data=n + 1, fsdp=1)


def test_multi_host_detection():
    assert not multi_host_environment({})
    assert not multi_host_environment({"SLURM_NTASKS": "1"})
    assert multi_host_environment({"SLURM_NTASKS": "4"})
    assert multi_host_environment({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
    assert multi_host_environment({"TPU_WORKER_HOSTNAMES": "a,b"})
    assert not multi_host_environment({"TPU_WORKER_HOSTNAMES": "localhost"})
