"""Assemble the SDXL prompt from validated keywords; the negative prompt is fixed.

The prompt is composed by code, never written free-form by the LLM or the user, so the identity
slot ("a woman img") and the prompt's comma structure hold by construction.
"""

from __future__ import annotations

from .safety import find_prompt_syntax, mentions

# Fixed on purpose: neither the idea nor an LLM answer can add to it.
NEGATIVE_PROMPT = (
    "lowres, blurry, out of focus, jpeg artifacts, watermark, text, signature, logo, "
    "deformed face, disfigured, asymmetric eyes, bad anatomy, extra fingers, extra limbs, "
    "cropped head, duplicate face, multiple people"
)


def subject_phrase(class_word: str | None, trigger: str | None) -> str:
    """'portrait of a woman img' / 'portrait of a woman' / 'portrait of a person'."""
    if class_word is None:
        return "portrait of a person"
    article = "an" if class_word[0].lower() in "aeiou" else "a"
    return f"portrait of {article} {class_word}" + (f" {trigger}" if trigger else "")


def compose_prompt(chosen: list[str], class_word: str | None = None, trigger: str | None = None) -> str:
    """The SDXL prompt: the subject phrase, then the chosen keywords in order of relevance."""
    prompt = ", ".join([subject_phrase(class_word, trigger), *chosen])
    check_prompt(prompt, class_word, trigger)
    return prompt


def check_prompt(prompt: str, class_word: str | None, trigger: str | None) -> None:
    """Raise ValueError unless the prompt is syntax-free and holds the identity slot exactly once."""
    if found := find_prompt_syntax(prompt):
        raise ValueError(f"prompt contains {found}")
    if trigger is not None:
        slot = f"{class_word} {trigger}"
        if prompt.count(slot) != 1 or len([p for p in prompt.split(", ") if mentions(p, trigger)]) != 1:
            raise ValueError(f"prompt must contain {slot!r} exactly once")
