"""Regenerate the committed reference arrays (needs the `reference` extra: torch).

    python tests/golden/make_golden.py

For each tiny random configuration, transformers/PyTorch builds a model, saves it in HF
format under tests/golden/<name>/ and records its float32 logits on fixed token ids.
For the embedded model it records transformers' logits (loading the same GGUF) and the
greedy 32-token completions of five prompts. The parity tests compare against these
files when torch is absent and against live transformers when it is present.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent.parent))

from tests.reference_models import (EMBEDDED_PROMPTS, TINY_CONFIGS, TINY_INPUT_IDS,  # noqa: E402
                                    embedded_reference_logits, reference_greedy_ids,
                                    tiny_reference_model)


def main() -> None:
    for name in TINY_CONFIGS:
        model = tiny_reference_model(name)
        folder = HERE / name
        model.save_pretrained(folder, safe_serialization=True)
        import torch

        with torch.no_grad():
            logits = model(torch.tensor(TINY_INPUT_IDS)).logits.float().numpy()
        np.save(folder / "logits.npy", logits)
        print(f"{name}: logits {logits.shape}")
    logits = embedded_reference_logits()
    np.savez_compressed(HERE / "embedded_logits.npz", logits=logits)
    greedy = reference_greedy_ids(EMBEDDED_PROMPTS, max_new_tokens=32)
    (HERE / "embedded_greedy.json").write_text(json.dumps(
        {"prompts": EMBEDDED_PROMPTS, "max_new_tokens": 32, "new_token_ids": greedy}, indent=1))
    print("embedded model: logits", logits.shape, "greedy ids for", len(greedy), "prompts")


if __name__ == "__main__":
    main()
