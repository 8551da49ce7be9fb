"""Caption statistics for the model-free shift check: sets captioned alike pass it, sets captioned differently
fail it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from cdi_audit.inputs.caption_statistics import STYLE_NAMES, caption_statistics
from cdi_audit.statistics.testing import permutation_test

WORDS = ("red blue green apple tree house river mountain portrait study light dark old new small large quiet city "
         "night morning").split()


def shift_p_value(suspect: list[str], reference: list[str], seed: int) -> float:
    """The shift check's permutation test on the caption statistics of the pooled sets (constant columns left
    out, as the shift check does)."""
    matrix, _ = caption_statistics(suspect + reference)
    is_suspect = np.r_[np.ones(len(suspect), bool), np.zeros(len(reference), bool)]
    matrix = matrix[:, np.ptp(matrix, axis=0) > 0]
    return permutation_test(matrix, is_suspect, 99, seed=seed, n_jobs=1).p_value


def random_caption(rng: np.random.Generator) -> str:
    """One caption of a varied style: sometimes none, sometimes capitalised or dated, 1 to 9 words."""
    if rng.random() < 0.1:
        return ""
    words = [str(word) for word in rng.choice(WORDS, rng.integers(1, 10))]
    if rng.random() < 0.3:
        words[0] = words[0].capitalize()
    if rng.random() < 0.2:
        words.append(str(rng.integers(1900, 2025)))
    return " ".join(words)


def test_a_small_example_by_hand() -> None:
    matrix, names = caption_statistics(["", "A red apple", "  two  words ", "x1, y2!"])
    # 7 distinct words ("a", "red", "apple", "two", "words", "x1", "y2") but 4 captions: 3 vocabulary directions
    assert names == (*STYLE_NAMES, "vocabulary_1", "vocabulary_2", "vocabulary_3") and matrix.shape == (4, 10)
    assert names[:7] == ("has_caption", "log_characters", "log_words", "mean_word_length", "digit_share",
                         "upper_case_share", "punctuation_share")
    np.testing.assert_allclose(matrix[:, :7], [
        [0, 0, 0, 0, 0, 0, 0],
        [1, math.log(12), math.log(4), 3, 0, 1 / 11, 0],  # (1 + 3 + 5) / 3 letters a word
        [1, math.log(11), math.log(3), 4, 0, 0, 0],  # spaces around a caption do not count
        [1, math.log(8), math.log(3), 3, 2 / 7, 0, 2 / 7],  # "x1," and "y2!": 3 characters each
    ])
    np.testing.assert_array_equal(matrix[0, 7:], 0.0)  # no words: the origin of the vocabulary directions


def test_rows_depend_on_the_pooled_captions_not_their_order() -> None:
    rng = np.random.default_rng(5)
    captions = [random_caption(rng) for _ in range(30)]
    matrix, _ = caption_statistics(captions)
    order = rng.permutation(30)
    np.testing.assert_array_equal(caption_statistics([captions[i] for i in order])[0], matrix[order])


@pytest.mark.parametrize(("captions", "columns"), [
    ([], 7), (["", "", "  "], 7), (["!!", "?"], 7),  # no words at all: no vocabulary columns
    (["cat", "cat", "cat"], 7),  # one word: no direction beside it
    (["cat", "dog", "cat dog"], 8),  # two words: one direction
])
def test_vocabulary_columns_shrink_with_the_vocabulary(captions: list[str], columns: int) -> None:
    matrix, names = caption_statistics(captions)
    assert matrix.shape == (len(captions), columns) and len(names) == columns


def test_sets_captioned_by_one_rule_pass_the_shift_check_at_the_nominal_rate() -> None:
    trials, alpha = 100, 0.05
    p_values = []
    for trial in range(trials):
        rng = np.random.default_rng([11, trial])
        pooled = [random_caption(rng) for _ in range(40)]
        p_values.append(shift_p_value(pooled[:20], pooled[20:], seed=trial))
    rejections = sum(p < alpha for p in p_values)
    assert rejections <= stats.binom.ppf(0.999, trials, alpha) == 13
    assert 0.3 < float(np.median(p_values)) < 0.7  # the statistics vary: a test that never rejects proves nothing


def test_long_descriptive_titles_against_one_word_tags_fail_the_shift_check() -> None:
    rng = np.random.default_rng(2)
    titles = [f"An oil painting of a {rng.choice(WORDS)} {rng.choice(WORDS)} at {rng.choice(WORDS)}, "
              f"with a {rng.choice(WORDS)} sky and the {rng.choice(WORDS)} {rng.choice(WORDS)} beyond "
              f"({rng.integers(1990, 2024)})" for _ in range(20)]
    tags = [str(rng.choice(WORDS)) for _ in range(20)]
    assert shift_p_value(titles, tags, seed=0) < 0.05
    assert shift_p_value(tags, titles, seed=0) < 0.05
