"""Results: the results store of experiment runs, the paper's reference numbers, figures."""
