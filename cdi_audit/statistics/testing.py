"""From feature rows to a p-value: the scoring model, cross-fitting and the tests.

The procedure is docs/method.md's ("The test"): a scaled logistic regression
is cross-fitted over the pooled suspect (P) and reference (U) rows, every
image gets an out-of-fold score, and the statistic is the Welch t of P's
scores against U's (positive when P scores higher). Its null distribution
comes from refitting on label permutations, which makes the p-value exact
under exchangeability; the CDI paper's pooled t-test on cross-fitted scores
treats dependent scores as independent and is not used.

Inputs are ``features`` (n, k) float arrays and ``is_suspect`` (n,) bool.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from cdi_audit.results.schema import Effect
from cdi_audit.statistics.scoring import cross_fitted_score_matrix, fit_and_score

# Tests an audit may decide with; ``cdi-reference`` (the paper's uncalibrated
# rule) exists only for comparison in ``evaluate``.
TestName = Literal["permutation", "split"]
AnyTestName = Literal["permutation", "split", "cdi-reference"]
# Permutations handed to one worker at a time: large enough to amortise
# process overhead, small enough that early stopping is not delayed much.
PERMUTATIONS_PER_TASK = 100
# Workers start only when the permutations left would take longer than this in one process.
PARALLEL_AFTER_SECONDS = 5.0


def scoring_model(random_state: int) -> Pipeline:
    """StandardScaler + L2 logistic regression (C=1): few parameters, no tuning, hard to overfit."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000, random_state=random_state))


def cross_fitted_scores(features: np.ndarray, is_suspect: np.ndarray, random_state: int) -> np.ndarray:
    """Out-of-fold P(suspect | features) for every row, from K=5 stratified folds.

    Each row is scored by a model that never saw it (``scoring.py`` solves the
    same model as ``scoring_model``, for many labellings at once).
    """
    return cross_fitted_score_matrix(features, is_suspect[None, :], random_state)[0]


def welch_statistics(scores: np.ndarray, suspect: np.ndarray, reference: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Welch t of P's scores against U's and its Welch-Satterthwaite degrees of freedom for each row of the
    (L, m) ``scores``, by one vectorised ``scipy.stats.ttest_ind(equal_var=False)``.

    ``suspect`` and ``reference`` (L, m) mark each row's two groups (``reference``
    defaults to the rest); every row has the same group sizes (a permutation
    keeps them, and the curve's audits of one size share them). t is NaN where
    both groups' scores are constant.
    """
    reference = ~suspect if reference is None else reference
    first, second = scores[suspect].reshape(len(scores), -1), scores[reference].reshape(len(scores), -1)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant groups: NaN below, not a warning
        result = stats.ttest_ind(first, second, axis=1, equal_var=False)
    statistic = np.array(result.statistic, dtype=float, ndmin=1)
    statistic[(np.ptp(first, axis=1) == 0) & (np.ptp(second, axis=1) == 0)] = np.nan
    return statistic, np.array(result.df, dtype=float, ndmin=1)


def welch_statistic(scores: np.ndarray, is_suspect: np.ndarray) -> float:
    """Welch t of P's scores against U's; NaN when both groups' scores are constant."""
    return float(welch_statistics(scores[None], is_suspect[None])[0][0])


@dataclass(frozen=True)
class TestOutcome:
    """A test's result, with the scores it was computed on (out-of-fold or held-out)."""

    __test__ = False  # not a pytest test class, despite the name

    test: AnyTestName
    statistic: float
    p_value: float
    scores: np.ndarray
    is_suspect: np.ndarray
    permutations_run: int | None = None
    stopped_early: bool = False
    # Positions (in the input rows) that ``scores`` belong to; None: every row, in order.
    rows: np.ndarray | None = None

    @property
    def degenerate(self) -> bool:
        return not np.isfinite(self.statistic)


def permuted_labels(is_suspect: np.ndarray, seed: int, index: int) -> np.ndarray:
    """The ``index``-th label permutation: a pure function of (seed, index), whatever the chunking."""
    return np.random.default_rng([seed, 7919, index]).permutation(is_suspect)


def _permuted_statistics(features: np.ndarray, is_suspect: np.ndarray, seed: int, indices: range) -> list[float]:
    labellings = np.stack([permuted_labels(is_suspect, seed, index) for index in indices])
    return welch_statistics(cross_fitted_score_matrix(features, labellings, seed), labellings)[0].tolist()


def permutation_test(
    features: np.ndarray,
    is_suspect: np.ndarray,
    permutations: int = 1000,
    stop_after_hits: int | None = None,
    seed: int = 0,
    n_jobs: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
) -> TestOutcome:
    """One-sided permutation p-value of the cross-fitted Welch statistic.

    p = (1 + #{T_perm >= T_obs}) / (B + 1). Sequential early stop (Besag and
    Clifford, Biometrika 1991): once ``stop_after_hits`` permuted statistics
    have reached T_obs after L permutations, p = hits / L, which is also a
    valid p-value and is then at least hits / B. The default stops after B / 20
    hits (50 for B = 1000), so an early stop means p > 0.05.
    Permuted statistics that are NaN count as reaching T_obs (conservative).
    The result does not depend on ``n_jobs``. ``on_progress(done, B)`` is
    called after each round of permutations.
    """
    if stop_after_hits is None:
        stop_after_hits = max(1, math.ceil(permutations / 20))
    scores = cross_fitted_scores(features, is_suspect, seed)
    observed = welch_statistic(scores, is_suspect)
    if not np.isfinite(observed):
        return TestOutcome("permutation", observed, 1.0, scores, is_suspect, 0)
    hits = done = 0
    for statistics in _permuted_rounds(features, is_suspect, seed, permutations, n_jobs):
        for statistic in statistics:
            done += 1
            hits += bool(statistic >= observed) or not np.isfinite(statistic)
            if hits >= stop_after_hits:
                return TestOutcome("permutation", observed, hits / done, scores, is_suspect, done, True)
        if on_progress is not None:
            on_progress(done, permutations)
    return TestOutcome("permutation", observed, (1 + hits) / (1 + done), scores, is_suspect, done)


def _permuted_rounds(features: np.ndarray, is_suspect: np.ndarray, seed: int, permutations: int, n_jobs: int
                     ) -> Iterator[list[float]]:
    """The permuted statistics in rounds, in index order: in this process while that is quick, in ``n_jobs``
    workers when the first round says the rest would take over ``PARALLEL_AFTER_SECONDS`` (starting workers
    costs about a second, more than a small audit's whole test)."""
    def task(start: int) -> range:
        return range(start, min(start + PERMUTATIONS_PER_TASK, permutations))

    if permutations <= 0:
        return
    started = time.perf_counter()
    yield _permuted_statistics(features, is_suspect, seed, task(0))
    remaining_tasks = math.ceil(max(0, permutations - PERMUTATIONS_PER_TASK) / PERMUTATIONS_PER_TASK)
    workers = effective_n_jobs(n_jobs)
    if workers == 1 or (time.perf_counter() - started) * remaining_tasks < PARALLEL_AFTER_SECONDS:
        for start in range(PERMUTATIONS_PER_TASK, permutations, PERMUTATIONS_PER_TASK):
            yield _permuted_statistics(features, is_suspect, seed, task(start))
        return
    round_size = PERMUTATIONS_PER_TASK * workers
    with Parallel(n_jobs=n_jobs) as parallel:
        for round_start in range(PERMUTATIONS_PER_TASK, permutations, round_size):
            round_end = min(permutations, round_start + round_size)
            chunks = parallel(delayed(_permuted_statistics)(features, is_suspect, seed, task(start))
                              for start in range(round_start, round_end, PERMUTATIONS_PER_TASK))
            yield [statistic for chunk in chunks for statistic in chunk]


def stratified_halves(is_suspect: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the split test's fitting half and test half: of each set, a random half (rounded down)
    fits and the rest is tested. Chosen without looking at any feature, so the test half stays unseen."""
    rng = np.random.default_rng([seed, 2])
    fit, test = [], []
    for members in (np.flatnonzero(is_suspect), np.flatnonzero(~is_suspect)):
        shuffled = rng.permutation(members)
        fit.append(shuffled[: len(members) // 2])
        test.append(shuffled[len(members) // 2 :])
    return np.concatenate(fit), np.concatenate(test)


def split_tests(features: np.ndarray, is_suspect: np.ndarray, audits: list[np.ndarray], seeds: list[int]
                ) -> list[TestOutcome]:
    """The split test of ``split_test`` on many audits drawn from the same rows, solved as one stack.

    ``features`` (n, k) and ``is_suspect`` (n,) are all rows; each audit is an
    array of row indices (its P and U rows, the same numbers of each in every
    audit) with its own seed, and is split
    into halves as ``split_test`` splits its rows. Outcomes' ``rows`` are the
    tested rows' indices into ``features``.
    """
    fitted, tested = np.zeros((len(audits), len(is_suspect))), np.zeros((len(audits), len(is_suspect)), bool)
    for audit, (rows, seed) in enumerate(zip(audits, seeds, strict=True)):
        fit_half, test_half = stratified_halves(is_suspect[rows], seed)
        fitted[audit, rows[fit_half]], tested[audit, rows[test_half]] = 1.0, True
    scores = fit_and_score(features, np.broadcast_to(is_suspect, fitted.shape), fitted)
    statistics, freedom = welch_statistics(scores, tested & is_suspect, tested & ~is_suspect)
    with np.errstate(invalid="ignore"):
        p_values = np.where(np.isfinite(statistics), stats.t.sf(statistics, freedom), 1.0)
    return [TestOutcome("split", float(statistic), float(p), row_scores[row_tested], is_suspect[row_tested],
                        rows=np.flatnonzero(row_tested))
            for statistic, p, row_scores, row_tested in zip(statistics, p_values, scores, tested, strict=True)]


def split_test(features: np.ndarray, is_suspect: np.ndarray, seed: int = 0) -> TestOutcome:
    """Fit on a stratified half, score the other half, one-sided Welch t-test P > U on it.

    Valid without permutations because the tested scores come from a model
    that saw none of them; it spends half the data on fitting, so it has less
    power than the permutation test.
    """
    return split_tests(features, is_suspect, [np.arange(len(is_suspect))], [seed])[0]


def reference_rule_test(features: np.ndarray, is_suspect: np.ndarray, seed: int = 0) -> TestOutcome:
    """The CDI paper's rule, for comparison only: NOT a calibrated test.

    A two-sided Welch t-test on the pooled out-of-fold scores, as if the scores
    of five classifiers that share most of their training rows were
    independent. Under H0 it rejects more often than alpha (docs/method.md, "The CDI paper's rule");
    ``evaluate`` reports it so users see what the paper's rule would claim.
    """
    scores = cross_fitted_scores(features, is_suspect, seed)
    statistic = welch_statistic(scores, is_suspect)
    if not np.isfinite(statistic):
        return TestOutcome("cdi-reference", statistic, 1.0, scores, is_suspect)
    result = stats.ttest_ind(scores[is_suspect], scores[~is_suspect], equal_var=False)
    return TestOutcome("cdi-reference", statistic, float(result.pvalue), scores, is_suspect)


def run_test(
    test: AnyTestName,
    features: np.ndarray,
    is_suspect: np.ndarray,
    seed: int,
    permutations: int = 1000,
    n_jobs: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
) -> TestOutcome:
    if test == "permutation":
        return permutation_test(features, is_suspect, permutations=permutations, seed=seed, n_jobs=n_jobs,
                                on_progress=on_progress)
    if test == "split":
        return split_test(features, is_suspect, seed=seed)
    if test == "cdi-reference":
        return reference_rule_test(features, is_suspect, seed=seed)
    raise ValueError(f"unknown test {test!r}")


def auc(suspect: np.ndarray, reference: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUC of P against U = Mann-Whitney U / (n_P n_U) (ties count one half)."""
    statistic = stats.mannwhitneyu(suspect, reference, axis=axis).statistic
    return statistic / (suspect.shape[axis] * reference.shape[axis])


def _mean_difference(suspect: np.ndarray, reference: np.ndarray, axis: int = -1) -> np.ndarray:
    return suspect.mean(axis=axis) - reference.mean(axis=axis)


def effect_size(scores: np.ndarray, is_suspect: np.ndarray, seed: int = 0, resamples: int = 2000) -> Effect:
    suspect, reference = scores[is_suspect], scores[~is_suspect]

    def interval(statistic) -> tuple[float, float]:
        result = stats.bootstrap(
            (suspect, reference), statistic, n_resamples=resamples, method="percentile",
            rng=np.random.default_rng(seed), vectorized=True,
        )
        return float(result.confidence_interval.low), float(result.confidence_interval.high)

    pooled_sd = np.sqrt(
        ((len(suspect) - 1) * suspect.var(ddof=1) + (len(reference) - 1) * reference.var(ddof=1))
        / (len(suspect) + len(reference) - 2)
    )
    difference = float(_mean_difference(suspect, reference))
    return Effect(
        auc=float(auc(suspect, reference)),
        auc_ci=interval(auc),
        mean_score_difference=difference,
        mean_score_difference_ci=interval(_mean_difference),
        cohens_d=difference / pooled_sd if pooled_sd > 0 else 0.0,
    )
