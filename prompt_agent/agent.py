"""build_prompt: the agent's one entry point."""

from __future__ import annotations

from typing import Any

from .cache import cache_get, cache_key, cache_put
from .graph import build_graph
from .llm import make_chat_model
from .safety import check_slot, clean_idea
from .schemas import PromptResult
from .settings import AgentSettings, load_settings


def build_prompt(idea: str, *, class_word: str | None = None, trigger: str | None = None,
                 llm: Any = None, settings: AgentSettings | None = None, use_cache: bool = True) -> PromptResult:
    """Idea -> concept -> keywords by category -> 15 chosen -> SDXL prompt and negative prompt.

    llm: a LangChain chat model; None uses the one the settings name (or none: the offline path).
    Results are cached by idea + settings only when the model comes from the settings, since an
    arbitrary model object has no stable identity to key on. Raises IdeaError for unusable input.
    """
    idea = clean_idea(idea)
    class_word, trigger = check_slot(class_word, trigger)
    settings = load_settings() if settings is None else settings
    key = None
    if llm is None:
        key = cache_key(idea, class_word, trigger, settings.fingerprint()) if use_cache else None
        if key and (hit := cache_get(key, settings.cache_dir)):
            return hit
        llm = make_chat_model(settings)
    state = build_graph(llm, settings.structured_method).invoke(
        {"idea": idea, "class_word": class_word, "trigger": trigger, "sources": {}, "notes": []})
    result = PromptResult(idea=idea, concept=state["concept"], keywords_by_category=state["keywords"],
                          chosen=state["chosen"], prompt=state["prompt"],
                          negative_prompt=state["negative_prompt"], sources=state["sources"],
                          notes=state["notes"])
    # An answer produced while the LLM was down is not what these settings mean: don't keep it.
    if key and not state.get("llm_down"):
        cache_put(key, result, settings.cache_dir)
    return result
