"""The study's training stage runs on the configured mesh: on 8 host devices with
data=2 x fsdp=4 it exports the weights of a 1-device run; multi-host arguments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from research.training.sharding import distributed_arguments

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
from pathlib import Path
import jax, numpy as np
from transformers import AutoTokenizer
from configs import base
from research.data.rows import Row
from research.models.checkpoints import load_hf_folder
from research.models.loading import embedded_folder
from research.pipeline import stages
from research.pipeline.stages import train_stage
from research.training.sharding import make_mesh, mesh_from_config
from tests.pipeline_fixtures import save_tiny_model

root = Path(sys.argv[1])
source = save_tiny_model(root / "model", AutoTokenizer.from_pretrained(
    embedded_folder("smollm2-135m-instruct")))
cfg = base.get_config()
cfg.model.update(source=str(source), finetune_mode="full")
cfg.align.update(steps=3, batch_size=8, max_length=48, buckets=(48,))
cfg.align.optimizer.lr = 1e-3
rows = [Row(prompt=f"How do I brew tea number {i}?", response=f"Boil water and steep leaf {i}.",
            kind="benign", source="x", uid=f"x:{i}") for i in range(16)]
weights = lambda folder: np.concatenate(
    [np.ravel(a) for a in jax.tree.leaves(load_hf_folder(folder).layers.arrays())])
seen = {}
real_train = stages.train

def spy(step_fn, state, frozen, data, **kwargs):  # what the loop is handed
    seen["specs"] = sorted({str(getattr(a.sharding, "spec", "one device"))
                            for a in jax.tree.leaves(state.params)})
    return real_train(step_fn, state, frozen, data, **kwargs)

stages.train = spy
out = {}
for name, mesh in (("1x1", make_mesh(1, 1, devices=jax.devices()[:1])),
                   ("2x4", mesh_from_config({"data": 2, "fsdp": 4}))):
    _, entry, summary = train_stage(label=name, source=str(source), source_key="tiny",
                                    rows=rows, stage_cfg=cfg.align, model_cfg=cfg.model,
                                    cache_root=root / name, progress=False, mesh=mesh)
    out[name] = (summary["mesh"], weights(entry / "hf"), seen.pop("specs"))
print(json.dumps({"meshes": [out["1x1"][0], out["2x4"][0]],
                  "specs": [out["1x1"][2], out["2x4"][2]],
                  "max_diff": float(np.abs(out["1x1"][1] - out["2x4"][1]).max()),
                  "moved": float(np.abs(out["1x1"][1] - weights(source)).max())}))
"""


def test_stage_on_eight_devices_exports_the_one_device_weights(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["meshes"] == [{"data": 1, "fsdp": 1}, {"data": 2, "fsdp": 4}]
    one, eight = result["specs"]  # the parameters the loop trains: FSDP-sharded on 2x4
    assert not any("fsdp" in spec for spec in one) and any("fsdp" in spec for spec in eight)
    assert result["moved"] > 1e-3  # training changed the weights, so equality means something
    assert result["max_diff"] < 1e-5


def test_distributed_arguments_spell_out_the_environment():
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
           "JAX_PROCESS_ID": "2"}
    assert distributed_arguments(env) == {"coordinator_address": "10.0.0.1:1234",
                                          "num_processes": 4, "process_id": 2}
    assert distributed_arguments({"COORDINATOR_ADDRESS": "h:1"}) == {"coordinator_address": "h:1"}
    assert distributed_arguments({"SLURM_NTASKS": "8"}) == {}  # left to JAX's detection
    with pytest.raises(ValueError, match="JAX_PROCESS_ID"):
        distributed_arguments({"JAX_PROCESS_ID": "first"})
