"""Vaccine on 8 host devices: a 2 (data) x 4 (fsdp) mesh gives the 1-device losses and
perturbation norms, plain and accelerated, with the parameters staying FSDP-sharded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# Runs Vaccine steps on a mesh and prints the per-step (loss, eps_norm) as JSON.
SCRIPT = """
import json, sys
import jax, optax
from research.training.sharding import make_mesh, param_shardings, shard_batch, shard_params
from research.training.state import init_train_state, split_model
from research.training.vaccine import make_accelerated_vaccine_step, make_vaccine_step
from tests.test_training_fixtures import make_batch, tiny_model

def run(data, fsdp, tau):
    mesh = make_mesh(data, fsdp, devices=jax.devices()[: data * fsdp])
    graphdef, params, frozen = split_model(tiny_model(lora=False), "full")
    opt = optax.adamw(1e-2, weight_decay=0.1)
    state = shard_params(mesh, init_train_state(params, opt, seed=0))
    frozen = shard_params(mesh, frozen)
    if tau == 0:
        step = make_vaccine_step(graphdef, opt, rho=2.0, accum_steps=2,
                                 state_shardings=param_shardings(mesh, state))
    else:
        step = make_accelerated_vaccine_step(graphdef, opt, rho=2.0, tau=tau, accum_steps=2)
    out = []
    for s in range(4):
        state, metrics = step(state, frozen, shard_batch(mesh, make_batch(rows=16, seed=s)))
        out.append([float(metrics["loss"]), float(metrics["eps_norm"])])
    w_up = state.params["layers"][0]["w_up"][...]
    return {"steps": out, "w_up_spec": [str(a) for a in w_up.sharding.spec],
            "devices": len(w_up.sharding.device_set)}

print(json.dumps({f"{d}x{f}_tau{t}": run(d, f, t) for d, f, t in json.loads(sys.argv[1])}))
"""


def test_eight_devices_give_the_one_device_vaccine_losses():
    cells = [(d, f, tau) for tau in (0, 2) for d, f in ((1, 1), (2, 4))]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cells)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(proc.stdout.strip().splitlines()[-1])
    for tau in (0, 2):
        single, many = runs[f"1x1_tau{tau}"], runs[f"2x4_tau{tau}"]
        assert single["devices"] == 1 and many["devices"] == 8
        assert many["w_up_spec"] == ["None", "fsdp"]  # layer 0's [D, F]
        np.testing.assert_allclose(many["steps"], single["steps"], rtol=1e-5)
        losses = [loss for loss, _ in single["steps"]]
        assert losses[0] != losses[-1]  # the run really trains
        np.testing.assert_allclose([norm for _, norm in single["steps"]], 2.0, rtol=1e-5)
    # accelerated (eps reused for a step) is a different update from the plain one
    assert runs["1x1_tau2"]["steps"][1][0] != runs["1x1_tau0"]["steps"][1][0]
