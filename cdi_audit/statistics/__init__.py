"""From feature rows to p-values: the scoring model, the tests, effect sizes, power and evaluation metrics."""
