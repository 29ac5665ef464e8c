"""User text is data: clean the idea at the boundary and detect prompt syntax in any text.

SDXL front ends give meaning to a few constructs: attention weights "(word:1.5)" / "[word]",
"BREAK" (start a new 77-token chunk), "<lora:...>" / "{a|b}" tags, and line breaks. None of them
may reach a prompt through the idea or through an LLM answer.
"""

from __future__ import annotations

import re
import unicodedata

from .errors import IdeaError

MAX_IDEA_CHARS = 60
_SLOT_WORD = re.compile(r"[A-Za-z][A-Za-z-]{0,23}")
_WEIGHT = re.compile(r":\s*[-+]?(?:\d+\.?\d*|\.\d+)")
_BREAK = re.compile(r"\bBREAK\b")
_BRACKETS = re.compile(r"[()\[\]{}<>|]")
# What an idea may keep: letters (any script), digits, space, apostrophe, hyphen.
_NOT_IDEA_CHAR = re.compile(r"[^\w' -]|_")


def strip_controls(text: str) -> str:
    """NFKC-normalise (folds fullwidth brackets to ASCII) and turn control/format chars into spaces."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(" " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in text)


def clean_idea(idea: object) -> str:
    """Return the idea as plain lowercase words, or raise IdeaError saying what is wrong."""
    if not isinstance(idea, str):
        raise IdeaError(f"idea must be text, not {type(idea).__name__}")
    text = " ".join(strip_controls(idea).split())
    if not text:
        raise IdeaError("idea is empty: give a short idea such as 'corporate confidence'")
    if len(text) > MAX_IDEA_CHARS:
        raise IdeaError(f"idea is {len(text)} characters long; the limit is {MAX_IDEA_CHARS}")
    # Neutralise rather than reject: "(calm:1.5) ocean" still means "calm ocean".
    text = _BREAK.sub(" ", _WEIGHT.sub(" ", text))
    text = _NOT_IDEA_CHAR.sub(" ", text)
    words = [w.strip("'-") for w in text.lower().split()]
    text = " ".join(w for w in words if w)
    if not text:
        raise IdeaError("idea has no words left once prompt syntax is removed")
    return text


def check_slot(class_word: str | None, trigger: str | None) -> tuple[str | None, str | None]:
    """Validate the identity class word and trigger (single plain words; trigger needs a class word)."""
    for field, value in (("class word", class_word), ("trigger", trigger)):
        if value is not None and not _SLOT_WORD.fullmatch(value):
            raise IdeaError(f"{field} must be one word of letters (at most 24), got {value!r}")
    if trigger is not None and class_word is None:
        raise IdeaError("a trigger word needs a class word (e.g. --class-word woman --trigger img)")
    if trigger is not None and trigger.lower() == class_word.lower():
        raise IdeaError("class word and trigger must differ")
    return class_word, trigger


def find_prompt_syntax(text: str) -> str | None:
    """Name the first prompt-syntax construct or control character in text, or None if clean."""
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text):
        return "line breaks or control characters"
    normalised = unicodedata.normalize("NFKC", text)
    if _BRACKETS.search(normalised):
        return "brackets"
    if _WEIGHT.search(normalised):
        return "a ':number' weight"
    if _BREAK.search(normalised):
        return "BREAK"
    return None


def mentions(text: str, word: str) -> bool:
    """True when word occurs in text as a whole word, ignoring case."""
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text, re.IGNORECASE) is not None
