"""Prompt agent: a two-word idea -> an SDXL portrait prompt (LangGraph; offline by default).

Names are imported on first use (PEP 562) so that `portrait --help`, which imports
prompt_agent.cli, does not pay for LangGraph, numpy and the embedding stack.
"""

from importlib import import_module

_EXPORTS = {
    "build_prompt": "agent", "NEGATIVE_PROMPT": "compose", "IdeaError": "errors",
    "PromptAgentError": "errors", "SettingsError": "errors", "CATEGORIES": "schemas",
    "PromptResult": "schemas", "AgentSettings": "settings", "load_settings": "settings",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'prompt_agent' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return __all__
