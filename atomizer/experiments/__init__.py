"""Experiments: the recipe of record, the steps the notebooks call, notebook parameters, the runner.

* :mod:`~atomizer.experiments.recipes`: :data:`RECORD`, the settings validation selected (``configs/``,
  the notebooks' defaults and ``make demo`` use them);
* :mod:`~atomizer.experiments.steps`: train and evaluate a run, sweep it, the landscape, a store's runs;
* :mod:`~atomizer.experiments.params`: a notebook's parameters as a config, checked once;
* :mod:`~atomizer.experiments.runner`: ``atomizer experiment run SPEC.yaml``, a grid of papermill runs
  (a spec is data, checked whole before anything runs: see that module).

The cross-validated comparison (what ``scripts/run_cv.py`` did) is an experiment spec:
``atomizer experiment run experiments/eurosat_cv.yaml``.
"""

from atomizer.experiments.params import NotebookParameters, ParameterError, check_parameters, param_list
from atomizer.experiments.recipes import DEMO_2026, RECORD, Recipe
from atomizer.experiments.runner import (
    ExperimentSpec,
    SpecError,
    _client,
    check_rendered,
    check_scheduler,
    execute_run,
    local_notebook,
    notebook_parameters,
    run_experiment,
    run_states,
    stream_notebook_output,
)
from atomizer.experiments.steps import (
    LANDSCAPE,
    SWEEP_VALUES,
    EpochLines,
    landscape_set,
    pretrain_for_fold,
    run_label,
    run_landscape,
    run_path,
    run_sweep,
    run_tag,
    store_runs,
    train_and_evaluate,
)

__all__ = [
    "DEMO_2026",
    "LANDSCAPE",
    "RECORD",
    "SWEEP_VALUES",
    "EpochLines",
    "ExperimentSpec",
    "NotebookParameters",
    "ParameterError",
    "Recipe",
    "SpecError",
    "_client",
    "check_parameters",
    "check_rendered",
    "check_scheduler",
    "execute_run",
    "landscape_set",
    "pretrain_for_fold",
    "local_notebook",
    "notebook_parameters",
    "param_list",
    "run_experiment",
    "run_label",
    "run_landscape",
    "run_path",
    "run_states",
    "run_sweep",
    "run_tag",
    "store_runs",
    "stream_notebook_output",
    "train_and_evaluate",
]
