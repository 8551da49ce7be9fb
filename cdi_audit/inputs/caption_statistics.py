"""What the captions look like without any model: the text statistics of the model-free shift check.

A text-to-image model's loss on an image depends on its caption. If the suspect set's captions are written
differently from the reference set's (long descriptive titles for published works, one-word tags for sketches),
the model can tell the sets apart whether or not it was trained on them; these statistics let the shift check
see that difference, so that the verdict is inconclusive rather than a false accusation.

Each row is computed by a rule that does not know which set its image is in (the vocabulary is fitted on the
pooled captions of both sets, taken in sorted order), which keeps the shift check's permutation test exact.
"""

from __future__ import annotations

import math
import re

import numpy as np
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

STYLE_NAMES = ("has_caption", "log_characters", "log_words", "mean_word_length", "digit_share",
               "upper_case_share", "punctuation_share")
# The vocabulary enters as this many directions of the pooled TF-IDF matrix: enough to separate two
# ways of writing captions, few enough for a classifier fitted on tens of images.
VOCABULARY_COMPONENTS = 4
# A word for the vocabulary: any run of letters or digits, one character included ("a", "3").
WORD_PATTERN = r"(?u)\b\w+\b"


def _style(caption: str) -> list[float]:
    """One caption's ``STYLE_NAMES`` values; words are runs between spaces, shares are of its characters
    (punctuation counts everything that is neither a letter, a digit nor a space)."""
    text = caption.strip()
    words = text.split()
    characters = len(text)

    def share(count: int) -> float:
        return count / characters if characters else 0.0

    return [
        float(characters > 0), math.log1p(characters), math.log1p(len(words)),
        sum(map(len, words)) / len(words) if words else 0.0,
        share(sum(character.isdigit() for character in text)),
        share(sum(character.isupper() for character in text)),
        share(sum(not (character.isalnum() or character.isspace()) for character in text)),
    ]


def _vocabulary(texts: list[str]) -> np.ndarray:
    """(n, at most VOCABULARY_COMPONENTS) leading SVD directions of the TF-IDF matrix fitted on ``texts``;
    fewer columns when the vocabulary or the captions are too few to give them, none without any word."""
    if not any(re.search(WORD_PATTERN, text) for text in texts):
        return np.zeros((len(texts), 0))
    tfidf = TfidfVectorizer(token_pattern=WORD_PATTERN).fit_transform(texts)
    components = min(VOCABULARY_COMPONENTS, tfidf.shape[1] - 1, len(texts) - 1)
    if components < 1:
        return np.zeros((len(texts), 0))
    return TruncatedSVD(n_components=components, random_state=0).fit_transform(tfidf)


def caption_statistics(captions: list[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """An (n, k) float matrix of statistics of the pooled captions of both sets (in any order, empty caption
    for none), and its column names: ``STYLE_NAMES`` then ``vocabulary_1`` ... (see ``_vocabulary``).

    The matrix is computed on the captions in sorted order and its rows put back in the given order, so a row
    depends on its caption and on the pooled multiset of captions alone, not on which set comes first.
    Columns may be constant; the shift check leaves those out."""
    texts = sorted(caption.strip() for caption in captions)
    vocabulary = _vocabulary(texts)
    row_of = {text: row for row, text in enumerate(texts)}  # identical captions have identical rows
    rows = [row_of[caption.strip()] for caption in captions]
    style = np.array([_style(caption) for caption in captions], dtype=np.float64).reshape(len(captions),
                                                                                         len(STYLE_NAMES))
    names = STYLE_NAMES + tuple(f"vocabulary_{index + 1}" for index in range(vocabulary.shape[1]))
    return np.hstack([style, vocabulary[rows]]), names
