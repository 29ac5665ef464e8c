"""The prompt agent's settings: the one place that reads its environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from .errors import SettingsError

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "portrait" / "prompts"
_OFF = {"", "off", "none", "0", "false"}


class AgentSettings(BaseModel):
    """Which LLM (if any) backs the agent, and where results are cached."""

    model_config = ConfigDict(frozen=True)

    provider: Literal["none", "openai", "ollama"] = "none"
    base_url: str | None = None
    model: str | None = None
    api_key: SecretStr | None = None
    timeout: float = Field(default=30.0, gt=0, le=600)
    # Servers differ in what they support (vLLM: tool calls need --enable-auto-tool-choice,
    # json_schema needs guided decoding); None keeps the LangChain class's own default.
    structured_method: Literal["function_calling", "json_schema", "json_mode"] | None = None
    cache_dir: Path | None = DEFAULT_CACHE_DIR

    @model_validator(mode="after")
    def _model_named(self) -> AgentSettings:
        if self.provider != "none" and not self.model:
            raise ValueError(f"PORTRAIT_LLM_MODEL is required when PORTRAIT_LLM_PROVIDER={self.provider}")
        return self

    def fingerprint(self) -> dict[str, str | None]:
        """What changes the agent's answers (not the key, timeout or cache place)."""
        if self.provider == "none":
            return {"provider": "none"}
        return {"provider": self.provider, "base_url": self.base_url, "model": self.model,
                "structured_method": self.structured_method}


def load_settings(environ: Mapping[str, str] | None = None) -> AgentSettings:
    """Read PORTRAIT_LLM_* and PORTRAIT_PROMPT_CACHE_DIR; raise SettingsError with one line."""
    env = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    names = {"provider": "PORTRAIT_LLM_PROVIDER", "base_url": "PORTRAIT_LLM_BASE_URL",
             "model": "PORTRAIT_LLM_MODEL", "api_key": "PORTRAIT_LLM_API_KEY",
             "timeout": "PORTRAIT_LLM_TIMEOUT", "structured_method": "PORTRAIT_LLM_STRUCTURED_METHOD"}
    for field, name in names.items():
        value = env.get(name, "").strip()
        if value:
            raw[field] = value.lower() if field in ("provider", "structured_method") else value
    if "PORTRAIT_PROMPT_CACHE_DIR" in env:
        value = env["PORTRAIT_PROMPT_CACHE_DIR"].strip()
        raw["cache_dir"] = None if value.lower() in _OFF else Path(value).expanduser()
    try:
        return AgentSettings(**raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if not first["loc"]:  # a cross-field rule: its message already names the variables
            raise SettingsError(str(first["ctx"]["error"])) from None
        raise SettingsError(f"bad {names[str(first['loc'][0])]}: {first['msg']}") from None
