"""Optimisers and learning-rate schedules built from an `ml_collections` config.

Config fields (`optimizer` block of an experiment config; defaults in `default_config`):
  name: "adamw" | "sgd";  lr; schedule: "cosine" | "linear" | "constant";
  warmup_steps (int) or warmup_ratio (fraction of total_steps); total_steps;
  weight_decay (AdamW, skipped on norm scales and biases, as HF Trainer does);
  b1, b2, eps (AdamW); momentum, nesterov (SGD);
  ema_beta (0 disables the parameter EMA), ema_mode: "track" | "pull",
  ema_pull, ema_pull_every (pull mode's factor and period; research.training.ema).
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from research.training.ema import parameter_ema

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "linear", "constant")


def default_config() -> ml_collections.ConfigDict:
    """The optimiser block with the harmful fine-tuning protocol's alignment defaults."""
    return ml_collections.ConfigDict(dict(
        name="adamw", lr=1e-3, schedule="cosine", warmup_steps=-1, warmup_ratio=0.1,
        total_steps=100, weight_decay=0.1, b1=0.9, b2=0.999, eps=1e-8,
        momentum=0.0, nesterov=False, ema_beta=0.0, ema_mode="track",
        ema_pull=0.5, ema_pull_every=1))


def warmup_steps(cfg: ml_collections.ConfigDict) -> int:
    """Warmup length: explicit `warmup_steps` if >= 0, else `warmup_ratio * total_steps`."""
    if cfg.get("warmup_steps", -1) >= 0:
        return int(cfg.warmup_steps)
    return int(round(cfg.get("warmup_ratio", 0.0) * cfg.total_steps))


def make_schedule(cfg: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup from 0 to `lr`, then cosine/linear decay to 0 or constant."""
    kind = cfg.get("schedule", "constant")
    if kind not in SCHEDULES:
        raise ValueError(f"optimizer.schedule {kind!r} is not one of {SCHEDULES}")
    total, warm, lr = int(cfg.total_steps), warmup_steps(cfg), float(cfg.lr)
    if total <= 0 or not 0 <= warm <= total:
        raise ValueError(f"optimizer: need 0 <= warmup ({warm}) <= total_steps ({total}) "
                         "and total_steps > 0")
    decay_steps = max(total - warm, 1)
    if kind == "cosine":
        after = optax.cosine_decay_schedule(lr, decay_steps)
    elif kind == "linear":
        after = optax.linear_schedule(lr, 0.0, decay_steps)
    else:
        after = optax.constant_schedule(lr)
    if warm == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), after], [warm])


def decay_mask(params: Any) -> Any:
    """True for weight matrices; False for norm scales and biases (no weight decay)."""
    def decays(path, _leaf) -> bool:
        names = [str(getattr(k, "key", getattr(k, "name", ""))) for k in path]
        return not any("norm" in n or n.startswith("b_") for n in names)
    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The configured optimiser, chained with the parameter EMA when `ema_beta > 0`."""
    name = cfg.get("name", "adamw")
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name {name!r} is not one of {OPTIMIZERS}")
    schedule = make_schedule(cfg)
    if name == "adamw":
        opt = optax.adamw(schedule, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                          eps=cfg.get("eps", 1e-8), weight_decay=cfg.get("weight_decay", 0.0),
                          mask=decay_mask)
    else:
        momentum = cfg.get("momentum", 0.0) or None
        opt = optax.sgd(schedule, momentum=momentum, nesterov=cfg.get("nesterov", False))
    beta = float(cfg.get("ema_beta", 0.0))
    if beta > 0.0:
        opt = optax.chain(opt, parameter_ema(beta, cfg.get("ema_mode", "track"),
                                             pull=float(cfg.get("ema_pull", 0.5)),
                                             pull_every=cfg.get("ema_pull_every", 1)))
    return opt
