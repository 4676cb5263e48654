"""Training core: train state, response-only losses, jitted steps, parameter EMA,
sharding, Orbax checkpoints and the thin training loop."""

from research.training.checkpointing import Checkpointer
from research.training.ema import ParameterEmaState, ema_params, parameter_ema
from research.training.loop import NonFiniteLossError, ResumableIterator, train
from research.training.losses import masked_nll_sum, per_example_mean_nll, sft_loss_sum
from research.training.optim import default_config, make_optimizer, make_schedule
from research.training.sharding import (make_mesh, maybe_initialize_distributed,
                                        param_shardings, shard_batch, shard_params)
from research.training.state import TrainState, init_train_state, split_model
from research.training.steps import (accumulate_gradients, apply_gradients, make_sft_step,
                                     make_train_step, sft_grad_fn)

__all__ = [
    "Checkpointer", "NonFiniteLossError", "ParameterEmaState", "ResumableIterator",
    "TrainState", "accumulate_gradients", "apply_gradients", "default_config",
    "ema_params", "init_train_state", "make_mesh", "make_optimizer", "make_schedule",
    "make_sft_step", "make_train_step", "masked_nll_sum", "maybe_initialize_distributed",
    "param_shardings", "parameter_ema", "per_example_mean_nll", "sft_grad_fn",
    "sft_loss_sum", "shard_batch", "shard_params", "split_model", "train",
]
