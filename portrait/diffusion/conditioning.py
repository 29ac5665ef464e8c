"""SDXL conditioning: both CLIP text encoders and the micro-conditioning time ids (Podell et al. 2023, §2.2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TextEncoding:
    embeds: torch.Tensor  # [B, 77, D1 + D2]: penultimate hidden states of both encoders
    pooled: torch.Tensor  # [B, P]: projected pooled output of the second encoder
    token_counts: torch.Tensor  # [B] int: tokens of each prompt before truncation (BOS/EOS included)


def sdxl_time_ids(height: int, width: int) -> torch.Tensor:
    """SDXL time ids [6] = original (h, w), crop top-left (0, 0), target (h, w)."""
    return torch.tensor([height, width, 0, 0, height, width], dtype=torch.float32)


@torch.no_grad()
def encode_prompts(tokenizers, text_encoders, prompts: list[str]) -> TextEncoding:
    """Encode prompts as diffusers' SDXL pipeline does (clip_skip None): hidden_states[-2] of each, concatenated."""
    hidden, pooled, counts = [], None, None
    for tokenizer, encoder in zip(tokenizers, text_encoders):
        max_len = tokenizer.model_max_length
        ids = tokenizer(prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt").input_ids
        out = encoder(ids.to(encoder.device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])  # [B, 77, Di]
        pooled = out[0]  # ends as the second encoder's text_embeds [B, P]
        if counts is None:
            counts = torch.tensor([len(t) for t in tokenizer(prompts, truncation=False).input_ids])
    return TextEncoding(torch.cat(hidden, dim=-1).float(), pooled.float(), counts)


@dataclass(frozen=True)
class TriggerEncoding:
    embeds: torch.Tensor  # [1, 77, D]: the class token repeated num_tokens x N times, trigger removed
    pooled: torch.Tensor  # [1, P]
    class_tokens_mask: torch.Tensor  # [1, 77] bool: the repeated class-token positions
    token_count: int  # tokens before truncation


def trigger_tokenizer(tokenizer, trigger: str):
    """A copy of `tokenizer` with the trigger word added as PhotoMaker adds it (one special token)."""
    import copy

    with_trigger = copy.deepcopy(tokenizer)
    with_trigger.add_tokens([trigger], special_tokens=True)
    return with_trigger


@torch.no_grad()
def encode_with_trigger(tokenizers, text_encoders, prompt: str, num_id_images: int, num_tokens: int,
                        trigger: str) -> TriggerEncoding:
    """PhotoMaker V2's encode_prompt_with_trigger_word: find the trigger token, drop it, repeat the token before it
    (the class word) num_tokens x N times and mark those positions; pad or cut to 77 as the reference does.
    `tokenizers` must already hold the trigger token (`trigger_tokenizer`)."""
    from portrait.diffusion.trigger import check_trigger
    from portrait.errors import InvalidInput

    hidden, pooled, mask, count = [], None, None, 0
    repeat = num_id_images * num_tokens
    for tokenizer, encoder in zip(tokenizers, text_encoders):
        trigger_id = tokenizer.convert_tokens_to_ids(trigger)
        clean, class_index = [], []
        for token in tokenizer.encode(prompt):
            if token == trigger_id:
                class_index.append(len(clean) - 1)
            else:
                clean.append(token)
        check_trigger(len(class_index), bool(class_index) and class_index[0] >= 1, trigger)
        at = class_index[0]
        max_len = tokenizer.model_max_length
        if at + repeat > max_len:
            raise InvalidInput("prompt", f"the class word before '{trigger}' is token {at}; with {num_id_images} identity "
                                         f"photo(s) it must be among the first {max_len - repeat} tokens")
        ids = clean[:at] + [clean[at]] * repeat + clean[at + 1:]
        count = len(ids)
        ids = ids[:max_len] + [tokenizer.pad_token_id] * (max_len - len(ids))
        mask = torch.tensor([[at <= i < at + repeat for i in range(max_len)]])
        out = encoder(torch.tensor([ids], device=encoder.device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = out[0]
    return TriggerEncoding(torch.cat(hidden, dim=-1).float(), pooled.float(), mask, count)
