"""Chat-model factory: any LangChain chat model, chosen by settings, imported only when configured."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import SettingsError
from .settings import AgentSettings

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel


def make_chat_model(settings: AgentSettings) -> BaseChatModel | None:
    """The configured chat model, or None for the offline path (provider 'none')."""
    if settings.provider == "none":
        return None
    try:
        if settings.provider == "openai":
            from langchain_openai import ChatOpenAI

            # Any OpenAI-compatible server (vLLM, a Triton-hosted LLM, OpenAI itself).
            return ChatOpenAI(model=settings.model, base_url=settings.base_url,
                              api_key=settings.api_key or "not-needed", timeout=settings.timeout,
                              max_retries=0, temperature=0)
        from langchain_ollama import ChatOllama

        return ChatOllama(model=settings.model, base_url=settings.base_url, temperature=0,
                          client_kwargs={"timeout": settings.timeout})
    except ImportError as exc:
        package = "langchain-openai" if settings.provider == "openai" else "langchain-ollama"
        raise SettingsError(f"PORTRAIT_LLM_PROVIDER={settings.provider} needs `pip install {package}` "
                            f"({exc.name} is missing)") from None
