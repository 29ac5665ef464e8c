"""Keywords that contradict the idea: never chosen, whoever proposed them (the offline ranking or an LLM).

Sentence embeddings put antonyms close together ("confidence" and "fearful" share a topic), so similarity
alone picks them. Two kinds of knowledge that ship with the project say when a keyword goes against the idea:

- word valence from VADER's lexicon (Hutto & Gilbert 2014: 7,500 words rated by people from -4 to +4,
  in the vaderSentiment wheel); its compound score handles negation ("not afraid"). A keyword of clear
  valence against an idea of clear opposite valence contradicts it.
- the curated `opposites` of prompt_agent/data/vocabulary.yaml: pairs of word sets for what valence cannot
  see (seasons, hours, eras, light) or rates weakly (melancholy, noir).
"""

from __future__ import annotations

import re
from functools import lru_cache

import yaml

# |compound| at or above this counts as clear valence: a single word rated about +-1.3 or more
# ("calm" 1.3, "confident" 2.2, "fearful" -2.2, "melancholy" -1.9); "warm" 0.9 or "rainy" -0.3 stay neutral.
VALENCE_THRESHOLD = 0.3
_WORD = re.compile(r"[a-z0-9][a-z0-9'-]*")


@lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


@lru_cache(maxsize=4096)
def valence(text: str) -> float:
    """VADER's compound valence of text, in [-1, 1] (0: neutral or unknown words)."""
    return float(_analyzer().polarity_scores(text)["compound"])


@lru_cache(maxsize=1)
def load_opposites() -> tuple[tuple[frozenset[str], frozenset[str]], ...]:
    """The vocabulary's opposite pairs, each side a set of lowercase whole words."""
    from .offline import vocabulary_text

    pairs = yaml.safe_load(vocabulary_text()).get("opposites") or []
    out = []
    for pair in pairs:
        if len(pair) != 2 or not all(pair):
            raise ValueError(f"an opposite is two non-empty word lists, got {pair!r}")
        out.append(tuple(frozenset(str(w).lower() for w in side) for side in pair))
    return tuple(out)


def words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


def contradiction(keyword: str, idea: str) -> str | None:
    """Why keyword contradicts idea ("'fearful' opposes 'confidence'"), or None when it does not."""
    idea_words, keyword_words = words(idea), words(keyword)
    if keyword_words <= idea_words:  # the idea's own words never contradict it
        return None
    for side_a, side_b in load_opposites():
        for mine, other in ((side_a, side_b), (side_b, side_a)):
            held = idea_words & mine
            if held and not idea_words & other and (clash := keyword_words & other):
                return f"{keyword!r} opposes {min(held)!r} ({min(clash)} vs {min(held)})"
    idea_v, keyword_v = valence(idea), valence(keyword)
    if idea_v * keyword_v < 0 and min(abs(idea_v), abs(keyword_v)) >= VALENCE_THRESHOLD:
        return f"{keyword!r} has the opposite feeling of the idea (valence {keyword_v:+.2f} vs {idea_v:+.2f})"
    return None


def contradicting(keywords, idea: str) -> list[str]:
    """The keywords (in order) that contradict the idea, each with its reason."""
    return [f"{why}" for k in keywords if (why := contradiction(k, idea))]


def agrees(keyword: str, idea: str) -> bool:
    return contradiction(keyword, idea) is None
