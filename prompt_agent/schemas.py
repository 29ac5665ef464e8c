"""Typed graph state and the pydantic models every node output (LLM or offline) must pass."""

from __future__ import annotations

import operator
import re
from typing import Annotated, Literal, TypedDict

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, model_validator

from .safety import find_prompt_syntax

CATEGORIES = ("themes", "colors", "styles", "mediums", "subjects", "emotions", "time", "places")
N_CHOSEN = 15
CONCEPT_WORDS = (25, 90)  # "~50 words", with room either side
_KEYWORD = re.compile(r"[a-z0-9](?:[a-z0-9' -]*[a-z0-9])?")


def _no_syntax(value: object) -> object:
    """Reject prompt syntax before any normalisation can hide it (e.g. lowercasing BREAK)."""
    if isinstance(value, str) and (found := find_prompt_syntax(value)):
        raise ValueError(f"contains {found}")
    return value


def _keyword(value: str) -> str:
    """Normalise a keyword to lowercase single-spaced words and enforce its shape."""
    value = " ".join(value.lower().split())
    if not _KEYWORD.fullmatch(value):
        raise ValueError("a keyword is lowercase letters, digits, spaces, hyphens or apostrophes")
    if len(value) > 40 or len(value.split()) > 4:
        raise ValueError("a keyword is at most 4 words and 40 characters")
    return value


def _concept(value: str) -> str:
    value = " ".join(value.split())
    low, high = CONCEPT_WORDS
    if not low <= len(value.split()) <= high:
        raise ValueError(f"the concept must be {low} to {high} words, got {len(value.split())}")
    return value


Keyword = Annotated[str, BeforeValidator(_no_syntax), AfterValidator(_keyword)]
Keywords = Annotated[list[Keyword], Field(min_length=3, max_length=10)]
KEYWORD = TypeAdapter(Keyword)  # validates one keyword outside a model (vocabulary, tests)


class PortraitConcept(BaseModel):
    """A portrait concept of about 50 words for the user's idea."""

    concept: Annotated[str, BeforeValidator(_no_syntax), AfterValidator(_concept), Field(
        max_length=700, description="One paragraph of 35 to 70 words describing a single-person "
        "portrait: subject, setting, era, light, palette, medium and mood. Plain prose.")]


class PortraitKeywords(BaseModel):
    """Keywords for the portrait concept, 3 to 10 per category, no keyword repeated."""

    themes: Keywords
    colors: Keywords
    styles: Keywords
    mediums: Keywords
    subjects: Keywords
    emotions: Keywords
    time: Keywords
    places: Keywords

    @model_validator(mode="after")
    def _distinct(self) -> PortraitKeywords:
        words = [w for c in CATEGORIES for w in getattr(self, c)]
        repeated = sorted({w for w in words if words.count(w) > 1})
        if repeated:
            raise ValueError(f"keywords repeated: {', '.join(repeated)}")
        return self

    def by_category(self) -> dict[str, list[str]]:
        return {c: list(getattr(self, c)) for c in CATEGORIES}


class ChosenKeywords(BaseModel):
    """Exactly 15 distinct keywords copied from the offered list, most relevant first."""

    chosen: Annotated[list[Keyword], Field(min_length=N_CHOSEN, max_length=N_CHOSEN)]

    @model_validator(mode="after")
    def _distinct(self) -> ChosenKeywords:
        if len(set(self.chosen)) != len(self.chosen):
            raise ValueError("chosen keywords must be distinct")
        return self


Source = Literal["llm", "offline"]


class PromptResult(BaseModel):
    """What the agent hands to the image pipeline (and prints)."""

    model_config = ConfigDict(frozen=True)

    idea: str
    concept: str
    keywords_by_category: dict[str, list[str]]
    chosen: list[str]
    prompt: str
    negative_prompt: str
    sources: dict[str, Source] = Field(description="node -> which path produced its output")
    notes: list[str] = Field(default_factory=list, description="why a node fell back, if it did")


class AgentState(TypedDict, total=False):
    """State carried through concept -> meta_keywords -> choose."""

    idea: str
    class_word: str | None
    trigger: str | None
    concept: str
    keywords: dict[str, list[str]]
    chosen: list[str]
    prompt: str
    negative_prompt: str
    sources: Annotated[dict[str, Source], operator.or_]
    notes: Annotated[list[str], operator.add]
    llm_down: bool  # set when the backend failed outright, so later nodes skip it
