"""Shared defaults of the harmful fine-tuning study (the Vaccine paper's protocol,
scaled to the embedded model on a CPU). Experiment configs start from `get_config()`."""

from __future__ import annotations

import ml_collections

from research.models.lora import LORA_TARGETS


def optimizer(lr: float, *, schedule: str = "cosine", weight_decay: float = 0.1,
              ema_beta: float = 0.0) -> ml_collections.ConfigDict:
    """An `optimizer` block (see research.training.optim); total_steps is set per stage."""
    return ml_collections.ConfigDict(dict(
        name="adamw", lr=lr, schedule=schedule, warmup_steps=-1, warmup_ratio=0.1,
        total_steps=1, weight_decay=weight_decay, b1=0.9, b2=0.999, eps=1e-8, momentum=0.0,
        nesterov=False, ema_beta=ema_beta, ema_mode="track"))


def train_block(*, method: str, lr: float, epochs: float, batch_size: int = 8,
                max_length: int = 96) -> ml_collections.ConfigDict:
    """A training stage: method, data pass, sequence length, optimiser, checkpoints."""
    return ml_collections.ConfigDict(dict(
        method=method, method_config=ml_collections.ConfigDict({"remat": False}),
        epochs=epochs, steps=0, batch_size=batch_size, accum_steps=1, clip_norm=1.0,
        max_length=max_length, buckets=(48, 64, 80, 96, 128), seed=0, save_every=50,
        optimizer=optimizer(lr)))


def get_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.run = ml_collections.ConfigDict(dict(
        experiment="harmful_finetuning", name="", root="runs", cache_dir="runs/cache",
        title="Harmful fine-tuning study"))
    # the training mesh (research.training.sharding): data parallel over all devices;
    # fsdp > 1 shards parameters and optimiser state too. Not part of any cache key.
    cfg.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    # every trained arm is trained once per seed (its training seed offset by it)
    cfg.seeds = (0, 1, 2)
    cfg.model = ml_collections.ConfigDict(dict(
        source="smollm2-135m-instruct", dtype="float32", finetune_mode="full",
        lora_rank=8, lora_alpha=16.0, lora_targets=LORA_TARGETS))
    cfg.data = ml_collections.ConfigDict(dict(
        harmful_sources="advbench,donotanswer",
        benign_sources="twins,persistbench,everyday,freshqa,writingbench",
        benign_max_chars=300,
        task="rg_basic_arithmetic", n_align_harmful=300, n_user_harmful=120,
        n_align_benign_prompts=480, min_benign_ratio=1.0, harmful_temperature=0.7, seed=0,
        generation=ml_collections.ConfigDict(dict(max_new_tokens=64, batch_size=16, seed=0,
                                                      temperature=0.0))))
    # Full fine-tuning at lr 3e-5 for both stages (the reference); LoRA with
    # `model.finetune_mode="lora"` needs a higher lr (about 1e-3 aligned on the demo).
    cfg.align = train_block(method="sft", lr=3e-5, epochs=2)
    cfg.finetune = train_block(method="sft", lr=3e-5, epochs=2)
    cfg.finetune.n = 200
    cfg.finetune.p_values = (0.0, 0.05, 0.1, 0.2)
    cfg.finetune.starts = ("base", "aligned")
    cfg.finetune.ema_betas = (0.0, 0.99)
    cfg.eval = ml_collections.ConfigDict(dict(
        n_harmful=100, n_benign=100, n_task=100,
        benign_sources="persistbench,writingbench,freshqa", benign_max_chars=600,
        max_new_tokens=48,
        # benign-but-edgy probes (XSTest-style), reported per source, not pooled
        edgy_sources="rho_overrefusal", n_edgy=100,
        # research.evaluation.judges; its calibration agreement is cited in every report
        judge="relevance",
        task_max_new_tokens=24, batch_size=16, seed=0,
        # "test" for reported numbers; "val" to tune data and recipes without touching
        # them (no stage trains on either).
        split="test"))
    return cfg
