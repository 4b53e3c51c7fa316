"""One thin entry module per paper: ``python -m experiments.NAME --help``."""
