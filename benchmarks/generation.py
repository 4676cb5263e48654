"""Generation and forward-pass speed of the embedded model against transformers+torch.

    python -m benchmarks.generation [--quick]

Both run in this process on the same CPU with the same float32 weights: greedy decoding
of batch 8 prompts (~30 tokens each, left-padded) for 64 new tokens (EOS ignored, so
both produce exactly 64), time to first token (prefill + one token), and a forward pass
of batch 8 x 128. The last line is a JSON object with the ratios (ours / reference).
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.timing import call_seconds
from research.models import load_pretrained
from research.models.chat import render_prompt
from research.models.generate import generate_ids

PROMPTS = [
    "Explain in detail how a refrigerator keeps food cold and what each part does.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "What are the main differences between renewable and non-renewable energy sources?",
    "Give me a step by step plan to learn to play the guitar in three months at home.",
    "Describe the water cycle and why it matters for farming in dry regions of the world.",
    "Summarize the causes of the French Revolution for a high school history class today.",
    "How do vaccines train the immune system to recognise a virus it has never seen?",
    "Suggest five healthy breakfast ideas that take less than ten minutes to prepare.",
]


def best_time(fn, repeats: int) -> float:
    return min(call_seconds(fn, repeats))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    new_tokens, batch, fwd_len = 64, 8, 128

    import torch
    import transformers

    from tests.reference_models import embedded_gguf

    model, tokenizer = load_pretrained("smollm2-135m-instruct")
    path = embedded_gguf()
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype="float32").eval()
    prompt_ids = [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]
                  for p in PROMPTS[:batch]]
    lengths = [len(ids) for ids in prompt_ids]

    def ours(n):
        return lambda: generate_ids(model, prompt_ids, max_new_tokens=n, eos_ids=[],
                                    pad_id=tokenizer.pad_token_id, batch_size=batch)

    tokenizer.padding_side = "left"
    texts = [render_prompt(tokenizer, p) for p in PROMPTS[:batch]]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)

    def theirs(n):
        def run():
            with torch.no_grad():
                reference.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id)
        return run

    gen_ours, gen_ref = best_time(ours(new_tokens), repeats), best_time(theirs(new_tokens), repeats)
    ttft_ours, ttft_ref = best_time(ours(1), repeats), best_time(theirs(1), repeats)

    tokens = np.random.default_rng(0).integers(10, 49000, size=(batch, fwd_len))
    # the weights are an argument, as in training: closed over, they would be compile-time
    # constants that XLA folds (a 1.4 s transpose of the embedding) and lays out its own way
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t, logits="all").logits)
    tokens_jax = jnp.asarray(tokens)
    fwd_ours = best_time(lambda: forward(state, tokens_jax).block_until_ready(), repeats)
    tokens_torch = torch.tensor(tokens)

    def fwd_theirs():
        with torch.no_grad():
            reference(tokens_torch)

    fwd_ref = best_time(fwd_theirs, repeats)

    gen_tokens = batch * new_tokens
    rows = [
        ("generate tokens/s", gen_tokens / gen_ours, gen_tokens / gen_ref),
        ("time to first token (s)", ttft_ours, ttft_ref),
        ("forward tokens/s (8x128)", batch * fwd_len / fwd_ours, batch * fwd_len / fwd_ref),
    ]
    print(f"embedded SmolLM2-135M, float32, batch {batch}, prompt lengths {min(lengths)}-"
          f"{max(lengths)}, {new_tokens} new tokens, torch threads {torch.get_num_threads()}, "
          f"jax {jax.__version__} on {jax.devices()[0].platform}")
    print(f"{'metric':28s} {'ours':>12s} {'transformers':>14s}")
    for name, a, b in rows:
        print(f"{name:28s} {a:12.3f} {b:14.3f}")
    print(json.dumps({
        "generate_tokens_per_s_ratio": round((gen_tokens / gen_ours) / (gen_tokens / gen_ref), 3),
        "forward_tokens_per_s_ratio": round(fwd_ref / fwd_ours, 3),
        "time_to_first_token_s": round(ttft_ours, 4),
        "reference_time_to_first_token_s": round(ttft_ref, 4),
        "generate_tokens_per_s": round(gen_tokens / gen_ours, 1),
        "reference_generate_tokens_per_s": round(gen_tokens / gen_ref, 1),
    }))


if __name__ == "__main__":
    main()
