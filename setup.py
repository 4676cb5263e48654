"""Package definition for the `research` codebase (fine-tuning safety in JAX)."""

from setuptools import find_packages, setup

setup(
    name="research",
    version="0.1.0",
    description="JAX research codebase: how fine-tuning erodes safety alignment, and defenses.",
    python_requires=">=3.11",
    packages=find_packages(include=["research", "research.*"]),
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "chex>=0.1.92",
        "ml-collections>=1.1",
        "transformers>=5.0",
        "tokenizers",
        "gguf>=0.19",
        "safetensors>=0.7",
        "datasets>=4.0",
        "numpy",
        "pyyaml",
        "matplotlib",
        "tqdm",
        "absl-py",
        "huggingface_hub",
        "reasoning-gym==0.1.25",  # procedurally generated tasks (research/data/tasks.py)
    ],
    extras_require={
        "dev": ["pytest", "pytest-xdist", "nbclient", "nbformat", "ipykernel", "scikit-learn"],
        "reference": ["torch==2.13.0", "transformers>=5.0", "accelerate"],
    },
)
