"""Answer normalisation shared by the text metrics (SQuAD-style: case, punctuation, articles, spaces)."""

import re
import string

_SPACE = re.compile(r"\s+")
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.IGNORECASE)
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str, ignore_case: bool = False, ignore_punctuation: bool = False, ignore_articles: bool = False) -> str:
    text = text.strip()
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        text = text.translate(_PUNCT)
    if ignore_articles:
        text = _ARTICLES.sub(" ", text)
    return _SPACE.sub(" ", text).strip()
