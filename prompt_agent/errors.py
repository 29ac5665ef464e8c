"""Exceptions of the prompt agent: front ends show their message, never a traceback."""

from portrait.errors import PortraitError


class PromptAgentError(PortraitError):
    """Base class for every error the prompt agent reports to a user."""


class IdeaError(PromptAgentError, ValueError):
    """The idea (or the class word / trigger that go with it) cannot be used."""


class SettingsError(PromptAgentError):
    """The PORTRAIT_LLM_* / PORTRAIT_PROMPT_* settings are inconsistent."""
