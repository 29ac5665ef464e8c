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


def identity_record(boxes, check) -> list[dict]:
    """The identity check as the store keeps it: per face its box, the identity (or face-prompt slot) it got (None:
    none) and its ArcFace cosine similarity to every identity before and after detailing."""
    return [{"box": [round(float(v), 1) for v in box],
             "identity": int(check.face_identity[f]) if check.face_identity[f] >= 0 else None,
             "similarity": [round(float(v), 4) for v in check.similarity[f]],
             "similarity_before": [round(float(v), 4) for v in check.similarity_before[f]]}
            for f, box in enumerate(boxes)]


def identity_score(meta: dict) -> float | None:
    """How well a production's faces got their people: the mean similarity of each face to its own identity (None
    without identities); what the sweep's contact sheet sorts by."""
    own = [face["similarity"][face["identity"]] for face in meta.get("identity_check") or []
           if face["identity"] is not None and face["similarity"]]
    return sum(own) / len(own) if own else None


def label_faces(image, faces: list[dict]):
    """The image with each face's box drawn and labelled with its identity and similarity (identity_record's
    entries): which face got whom, and how close it came. Returns a PIL image."""
    from PIL import Image, ImageDraw, ImageFont

    picture = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(12, picture.width // 40))
    colours = ["#ff4136", "#2ecc40", "#0074d9", "#ffdc00"]
    for face in faces:
        k = face["identity"]
        colour = colours[k % len(colours)] if k is not None else "#aaaaaa"
        x0, y0, x1, y1 = face["box"]
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=max(2, picture.width // 200))
        text = "no identity" if k is None else (f"identity {k + 1}: {face['similarity'][k]:.2f}" if face["similarity"]
                                                else f"prompt {k + 1}")
        left, top, right, bottom = draw.textbbox((x0, y0), text, font=font)
        y = y0 - (bottom - top) - 4 if y0 - (bottom - top) - 4 >= 0 else y1 + 2
        draw.rectangle((x0, y, x0 + right - left + 4, y + bottom - top + 4), fill=colour)
        draw.text((x0 + 2, y + 2 - (top - y0)), text, fill="black", font=font)
    return picture


def produce(client, store: ProductionStore, choice: PromptChoice, base: Stage1Params, detail: DetailParams | None,
            faces: list[bytes] | None = None, progress: Callable[[str, int, int], None] | None = None,
            cancel: threading.Event | None = None, extra: dict | None = None,
            identities: list[list[bytes]] | None = None, face_prompts: list[str] | None = None) -> tuple[Production, object]:
    """Generate one portrait (base.seed) and store it; returns the production and the client's PortraitOutput.
    `faces`: one person's photos, or `identities`: several people (one face each), and their `face_prompts`."""
    base = dataclasses.replace(base, prompt=choice.prompt, negative_prompt=choice.negative_prompt, batch_size=1)
    if detail is not None:
        detail = dataclasses.replace(detail, prompt=choice.prompt, negative_prompt=choice.negative_prompt, seed=base.seed)
    stage_started: dict[str, float] = {}

    def report(stage: str, step: int, total: int) -> None:
        stage_started.setdefault(stage, time.perf_counter())
        if progress is not None:
            progress(stage, step, total)

    started = time.perf_counter()
    people = identities or ([faces] if faces else [])
    out = client.portrait(base, detail, report, cancel=cancel, identities=people or None, face_prompts=face_prompts)
    finished = time.perf_counter()
    identity_keys = [[store.save_face(f) for f in group] for group in people]
    marks = sorted(stage_started.items(), key=lambda kv: kv[1])
    timings = {"total_s": round(finished - started, 3)}
    for (stage, at), nxt in zip(marks, [m[1] for m in marks[1:]] + [finished]):
        timings[f"{stage}_s"] = round(nxt - at, 3)
    meta = {
        "idea": choice.idea, "prompt": choice.prompt, "negative_prompt": choice.negative_prompt,
        "keywords": list(choice.keywords), "seed": out.seed,
        "params": {"stage1": dataclasses.asdict(base), "detail": dataclasses.asdict(detail) if detail else None},
        "faces": [key for group in identity_keys for key in group], "identities": identity_keys,
        "face_prompts": list(face_prompts or []), "identity_check": identity_record(out.boxes, out.identity),
        "faces_detailed": int(len(out.boxes)), "truncated_tokens": out.truncated_tokens,
        "model_set": model_set_info(), "timings": timings, **(extra or {}),
    }
    production = store.save_production({"image": out.image, "base": out.base_image, "mask": out.mask}, meta)
    return production, out


def detail_photo(client, store: ProductionStore, photo: bytes, detail: DetailParams,
                 identities: list[list[bytes]] | None = None, face_prompts: list[str] | None = None,
                 extra: dict | None = None) -> tuple[Production, object]:
    """Stage 2 alone on a user's photo (a group photo, a wedding picture): each face its person, stored as a
    production whose base is the photo. Returns the production and the client's DetailOutput."""
    from portrait.images import decode_image

    started = time.perf_counter()
    out = client.detail(photo, detail, identities=identities or None, face_prompts=face_prompts)
    finished = time.perf_counter()
    people = identities or []
    identity_keys = [[store.save_face(f) for f in group] for group in people]
    meta = {
        "idea": None, "prompt": detail.prompt, "negative_prompt": detail.negative_prompt, "keywords": [],
        "seed": detail.seed, "params": {"stage1": None, "detail": dataclasses.asdict(detail)},
        "faces": [key for group in identity_keys for key in group], "identities": identity_keys,
        "face_prompts": list(face_prompts or []), "identity_check": identity_record(out.boxes, out.identity),
        "faces_detailed": int(out.faces_found), "truncated_tokens": 0, "model_set": model_set_info(),
        "timings": {"total_s": round(finished - started, 3), "detail_s": round(finished - started, 3)},
        **(extra or {}),
    }
    base = decode_image(photo, "image")
    production = store.save_production({"image": out.image, "base": base, "mask": out.mask}, meta)
    return production, out
