"""PyTorch re-implementations the step-time benchmark compares the JAX steps with (optional:
``pip install -e '.[bench]'``); the JAX side of every case is in ``benchmarks/cases_*.py``."""
