"""A tiny random model saved with the real tokenizer, and a tiny study config."""

from __future__ import annotations

from pathlib import Path

import ml_collections

from configs import base
from research.models.checkpoints import save_hf_folder
from research.models.config import ModelConfig
from research.models.transformer import init_decoder

TINY = ModelConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=8, tie_word_embeddings=True,
                   eos_token_id=2, bos_token_id=1, pad_token_id=2)


def save_tiny_model(folder: Path, tokenizer) -> Path:
    return save_hf_folder(init_decoder(TINY, seed=0), folder, tokenizer)


def tiny_study_config(model_folder: Path, root: Path, name: str = "t1"
                      ) -> ml_collections.ConfigDict:
    """The study shrunk to seconds: a few rows, two steps per stage, a few prompts."""
    cfg = base.get_config()
    cfg.run.update(root=str(root / "runs"), cache_dir=str(root / "cache"), name=name,
                   experiment="tiny")
    cfg.model.update(source=str(model_folder), lora_rank=2, finetune_mode="lora")
    cfg.data.update(n_align_harmful=6, n_user_harmful=4, n_align_benign_prompts=12)
    # a random model's greedy answer is blank; sampling gives non-empty text to train on
    cfg.data.generation.update(max_new_tokens=4, batch_size=8, temperature=1.0)
    for block in (cfg.align, cfg.finetune):
        block.update(steps=2, batch_size=4, max_length=48, buckets=(48,))
    cfg.finetune.update(n=8, p_values=(0.25,), ema_betas=(0.0, 0.9))
    cfg.seeds = (0,)
    cfg.eval.update(n_harmful=6, n_benign=6, n_task=4, n_edgy=2, max_new_tokens=3,
                    task_max_new_tokens=2, batch_size=8)
    return cfg
