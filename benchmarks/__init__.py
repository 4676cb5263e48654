"""Speed and memory benchmarks against the PyTorch/transformers reference, run as
`python -m benchmarks.<name> [--quick]`; each prints a table and, last, one JSON line."""
