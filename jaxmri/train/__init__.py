"""The one training loop of jaxmri, its train state, results tables, figures and command line.

* :mod:`jaxmri.train.state`: :class:`TrainState` (params, optimiser and non-parameter
  collections) and :func:`create_train_state`.
* :mod:`jaxmri.train.loop`: :func:`fit`, the pmapped loop with orbax checkpoints, resume,
  Ctrl-C handling, non-finite-loss stop, progress bar and ``metrics.jsonl``; the contract of a
  method's pure ``train_step`` is in that module's docstring.
* :mod:`jaxmri.train.batching`: training batches as a function of the step, chunked (and timed)
  inference, evenly spread subsets of a split.
* :mod:`jaxmri.train.report`: mean ± sd tables as markdown and JSON.
* :mod:`jaxmri.train.claims`: a paper's claims judged on paired per-slice metrics (Wilcoxon,
  bootstrap interval, verdict), the regime table of its baselines, repeats over seeds.
* :mod:`jaxmri.train.figures`: PNG panels (images, error maps, zooms, k-space) and line profiles.
* :mod:`jaxmri.train.cli`: the command line and ``main`` skeleton shared by every experiment
  (:func:`~jaxmri.train.cli.run_experiment`, presets' shared fields and flag overrides).
* :mod:`jaxmri.train.distributed`: joining a multi-process run.

This package never imports :mod:`jaxmri.models` or :mod:`jaxmri.data`.
"""

from jaxmri.train.batching import map_batches, random_batches, spread_indices, timed_map_batches
from jaxmri.train.claims import (
    Claim,
    ClaimResult,
    PairedComparison,
    RegimeRow,
    judge_claims,
    paired_comparison,
    regime_table,
    report_claims,
    run_over_seeds,
    setting_rows,
    verdict,
    within_regime,
    write_claims,
    write_regime,
)
from jaxmri.train.loop import (
    AXIS_NAME,
    NonFiniteLossError,
    ReplicaDivergenceError,
    TrainingInterrupted,
    apply_mean_gradients,
    fit,
    make_parallel_step,
    pmean_tree,
    replicate,
    shard_batch,
    unreplicate,
)
from jaxmri.train.report import (
    folder_name,
    markdown_table,
    read_per_slice,
    summarise,
    write_per_slice,
    write_results,
)
from jaxmri.train.state import TrainState, create_train_state

__all__ = [
    "AXIS_NAME",
    "Claim",
    "ClaimResult",
    "PairedComparison",
    "RegimeRow",
    "judge_claims",
    "paired_comparison",
    "read_per_slice",
    "regime_table",
    "report_claims",
    "run_over_seeds",
    "setting_rows",
    "verdict",
    "within_regime",
    "write_claims",
    "write_per_slice",
    "write_regime",
    "NonFiniteLossError",
    "ReplicaDivergenceError",
    "TrainState",
    "TrainingInterrupted",
    "apply_mean_gradients",
    "create_train_state",
    "fit",
    "make_parallel_step",
    "map_batches",
    "markdown_table",
    "pmean_tree",
    "random_batches",
    "spread_indices",
    "timed_map_batches",
    "replicate",
    "shard_batch",
    "summarise",
    "folder_name",
    "unreplicate",
    "write_results",
]
