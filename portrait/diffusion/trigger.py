"""PhotoMaker's prompt rules (torch-free): the trigger word, the text-only prompt, the step where identity merges in.

The trigger is checked in two places, on the text (before anything runs: clients, `stage1`, `portrait`) and on the
tokens (`conditioning.encode_with_trigger`, where the class word's position is known); both raise through
`check_trigger`, so a prompt gets the same message wherever it fails.
"""

from __future__ import annotations

import re

from portrait.errors import InvalidInput

TRIGGER_WORD = "img"  # follows the class word: "a photo of a woman img, ..."
MERGE_STEP_CAP = 30  # PhotoMaker's demo caps start_merge_step at 30


def check_trigger(found: int, follows_class_word: bool, trigger: str = TRIGGER_WORD) -> None:
    """The trigger must appear once, as its own word, right after a class word."""
    if found == 0:
        raise InvalidInput("prompt", f"needs the trigger word '{trigger}' right after the class word when identity "
                                     f"photos are given, e.g. 'portrait of a woman {trigger}, ...'")
    if found > 1:
        raise InvalidInput("prompt", f"must contain the trigger word '{trigger}' once, found it {found} times")
    if not follows_class_word:
        raise InvalidInput("prompt", f"the trigger word '{trigger}' must follow a class word, as in 'a woman {trigger}'")


def text_only_prompt(prompt: str, trigger: str = TRIGGER_WORD) -> str:
    """The prompt without its trigger word (PhotoMaker's delayed-conditioning prompt); checks the trigger first."""
    found = list(re.finditer(rf"(?<![\w]){re.escape(trigger)}(?![\w])", prompt))
    check_trigger(len(found), bool(found) and bool(re.search(r"\w", prompt[:found[0].start()])), trigger)
    match = found[0]
    return prompt[:match.start()].rstrip() + prompt[match.end():]


def start_merge_step(style_strength: float, steps_run: int) -> int:
    """PhotoMaker's demo: int(style_strength_ratio / 100 x steps), at most 30. Steps i <= start_merge_step use the
    text-only embeddings and later ones the identity-fused ones, so a higher style strength gives less identity."""
    return min(int(style_strength / 100 * steps_run), MERGE_STEP_CAP)
