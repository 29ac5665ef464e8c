"""A small result cache keyed by idea + settings: in memory, and on disk when a directory is set."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

from pydantic import ValidationError

from .offline import vocabulary_digest
from .schemas import PromptResult

CACHE_VERSION = 2  # bump when the agent's output for the same inputs changes
MEMORY_ITEMS = 256
_memory: OrderedDict[str, PromptResult] = OrderedDict()


def cache_key(idea: str, class_word: str | None, trigger: str | None, llm: dict) -> str:
    """Hash of everything that determines the result (the vocabulary included)."""
    payload = {"v": CACHE_VERSION, "idea": idea, "class_word": class_word, "trigger": trigger,
               "llm": llm, "vocabulary": vocabulary_digest()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cache_get(key: str, directory: Path | None) -> PromptResult | None:
    """The cached result, or None; an unreadable or stale file counts as a miss."""
    if key in _memory:
        _memory.move_to_end(key)
        return _memory[key]
    if directory is None:
        return None
    try:
        result = PromptResult.model_validate_json((directory / f"{key}.json").read_bytes())
    except (OSError, ValidationError):
        return None
    _remember(key, result)
    return result


def cache_put(key: str, result: PromptResult, directory: Path | None) -> None:
    """Store in memory and, best effort, on disk (a read-only home must not fail a request)."""
    _remember(key, result)
    if directory is None:
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a concurrent reader never sees half a file.
        with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False) as tmp:
            tmp.write(result.model_dump_json())
        os.replace(tmp.name, directory / f"{key}.json")
    except OSError:
        pass


def clear_memory() -> None:
    _memory.clear()


def _remember(key: str, result: PromptResult) -> None:
    _memory[key] = result
    _memory.move_to_end(key)
    while len(_memory) > MEMORY_ITEMS:
        _memory.popitem(last=False)
