"""One production: (idea ->) prompt -> the streaming `portrait` model -> the store, with its metadata.

The Create page, the Sweep page and `portrait sweep` all make portraits through `produce`, so every
result is stored the same way whatever made it.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from portrait.app.store import Production, ProductionStore
from portrait.diffusion.trigger import TRIGGER_WORD
from portrait.params import DetailParams, Stage1Params


@dataclass(frozen=True)
class PromptChoice:
    prompt: str
    negative_prompt: str = ""
    idea: str | None = None
    keywords: tuple[str, ...] = ()


def prompt_from_idea(idea: str, class_word: str | None = None, with_identity: bool = False) -> PromptChoice:
    """The prompt agent's prompt for `idea`; with identity photos the class word + trigger word go in."""
    from portrait.errors import InvalidInput
    from prompt_agent import PromptAgentError, build_prompt

    try:
        result = build_prompt(idea, class_word=(class_word or "person") if with_identity else None,
                              trigger=TRIGGER_WORD if with_identity else None)
    except PromptAgentError as error:
        raise InvalidInput("idea", str(error)) from None
    return PromptChoice(result.prompt, result.negative_prompt, result.idea, tuple(result.chosen))


def model_set_info() -> dict:
    from portrait.settings import get_settings

    settings = get_settings()
    return {"models": str(settings.models_dir), "identity": settings.photomaker_file is not None}


def produce(client, store: ProductionStore, choice: PromptChoice, base: Stage1Params, detail: DetailParams | None,
            faces: list[bytes] | None = None, progress: Callable[[str, int, int], None] | None = None,
            cancel: threading.Event | None = None, extra: dict | None = None) -> tuple[Production, object]:
    """Generate one portrait (base.seed) and store it; returns the production and the client's PortraitOutput."""
    base = dataclasses.replace(base, prompt=choice.prompt, negative_prompt=choice.negative_prompt, batch_size=1)
    if detail is not None:
        detail = dataclasses.replace(detail, prompt=choice.prompt, negative_prompt=choice.negative_prompt, seed=base.seed)
    stage_started: dict[str, float] = {}

    def report(stage: str, step: int, total: int) -> None:
        stage_started.setdefault(stage, time.perf_counter())
        if progress is not None:
            progress(stage, step, total)

    started = time.perf_counter()
    out = client.portrait(base, detail, report, cancel=cancel, faces=faces or None)
    finished = time.perf_counter()
    face_keys = [store.save_face(f) for f in faces or []]
    marks = sorted(stage_started.items(), key=lambda kv: kv[1])
    timings = {"total_s": round(finished - started, 3)}
    for (stage, at), nxt in zip(marks, [m[1] for m in marks[1:]] + [finished]):
        timings[f"{stage}_s"] = round(nxt - at, 3)
    meta = {
        "idea": choice.idea, "prompt": choice.prompt, "negative_prompt": choice.negative_prompt,
        "keywords": list(choice.keywords), "seed": out.seed,
        "params": {"stage1": dataclasses.asdict(base), "detail": dataclasses.asdict(detail) if detail else None},
        "faces": face_keys, "faces_detailed": int(len(out.boxes)), "truncated_tokens": out.truncated_tokens,
        "model_set": model_set_info(), "timings": timings, **(extra or {}),
    }
    production = store.save_production({"image": out.image, "base": out.base_image, "mask": out.mask}, meta)
    return production, out
