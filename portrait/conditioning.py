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
