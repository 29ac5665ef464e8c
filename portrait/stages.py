"""Stage 1 and stage 2 as sequences of model calls, over any `Backend` (Triton BLS in the models).

Kept free of torch: the BLS models that run this (stage1, face_detailer) stay light processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from portrait.diffusion.trigger import start_merge_step, text_only_prompt
from portrait.errors import InvalidInput
from portrait.images import decode_image
from portrait.models.masks import face_mask, feather, paste_back, resize_square, square_crop_box
from portrait.params import MAX_ID_IMAGES, MAX_PROMPT_TOKENS, DetailParams, Stage1Params, check_id_images, negative_is_zeros, steps_run

Progress = Callable[[int, int], None]  # (step done, steps in this stage)


class Backend(Protocol):
    def encode_text(self, prompt: str) -> dict[str, np.ndarray]: ...  # prompt_embeds, pooled_prompt_embeds, token_count
    def denoise(self, inputs: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]: ...  # step/num_steps..., latents
    def decode(self, latents: np.ndarray) -> np.ndarray: ...  # [B, H, W, 3] uint8
    def encode_image(self, images: np.ndarray) -> np.ndarray: ...  # [B, C, h, w]
    def detect(self, image: np.ndarray, max_faces: int) -> dict[str, np.ndarray]: ...  # boxes, scores, keypoints, landmarks
    def encode_text_with_trigger(self, prompt: str, num_id_images: int) -> dict[str, np.ndarray]: ...  # + class_tokens_mask
    def embed_faces(self, image: np.ndarray, keypoints: np.ndarray) -> np.ndarray: ...  # [F, 512] raw ArcFace
    def fuse_identity(self, photos: list[bytes], id_embeds: np.ndarray, prompt_embeds: np.ndarray,
                      class_tokens_mask: np.ndarray) -> np.ndarray: ...  # [1, 77, D]


@dataclass(frozen=True)
class Identity:
    """A person's identity for one prompt (PhotoMaker V2), computed once per request."""

    prompt_embeds: np.ndarray  # [1, 77, D]: the prompt with the class token expanded and fused with the identity
    pooled_prompt_embeds: np.ndarray  # [1, P]: pooled output of the expanded prompt
    text_only_prompt: str  # the prompt without the trigger word: stage 1 and the steps up to start_merge_step
    photos: int


def prepare_identity(backend: Backend, photos: list[bytes], prompt: str, limit: int = MAX_ID_IMAGES) -> Identity:
    """Identity photos (encoded) -> fused prompt embeddings: the largest face of each photo is found, aligned and
    embedded (ArcFace), the prompt's class token expanded (text_encoder), then both fused (id_encoder).
    Fails before any diffusion: a prompt without the trigger word, too many photos, a photo without a face."""
    if not photos:
        raise InvalidInput("id_images", "is empty: send at least one identity photo, or leave the field out")
    check_id_images(len(photos), limit)
    text_only = text_only_prompt(prompt)
    embeds = []
    for i, data in enumerate(photos):
        which = f"photo {i + 1} of {len(photos)}"
        try:
            image = decode_image(data, "id_images")
        except InvalidInput as error:
            raise InvalidInput("id_images", f"{which} {error.message}") from None
        faces = backend.detect(image, 1)
        if len(faces["boxes"]) == 0:
            raise InvalidInput("id_images", f"no face found in {which}; use a photo with the face clearly visible")
        embeds.append(backend.embed_faces(image, faces["keypoints"][:1])[0])
    text = backend.encode_text_with_trigger(prompt, len(photos))
    fused = backend.fuse_identity(list(photos), np.stack(embeds).astype(np.float32), text["prompt_embeds"],
                                  text["class_tokens_mask"])
    return Identity(fused, text["pooled_prompt_embeds"], text_only, len(photos))


def text_inputs(backend: Backend, prompt: str, negative: str, n: int, force_zeros: bool) -> tuple[dict, int]:
    """The four conditioning tensors for `n` rows; zeros for an empty negative (force_zeros_for_empty_prompt)."""
    pos = backend.encode_text(prompt)
    neg = {k: np.zeros_like(v) for k, v in pos.items()} if negative_is_zeros(negative, force_zeros) else backend.encode_text(negative)
    inputs = {
        "prompt_embeds": pos["prompt_embeds"].repeat(n, 0), "pooled_prompt_embeds": pos["pooled_prompt_embeds"].repeat(n, 0),
        "negative_prompt_embeds": neg["prompt_embeds"].repeat(n, 0),
        "negative_pooled_prompt_embeds": neg["pooled_prompt_embeds"].repeat(n, 0),
    }
    return inputs, max(0, int(pos["token_count"].reshape(-1)[0]) - MAX_PROMPT_TOKENS)


def sampling_inputs(seeds: list[int], height: int, width: int, steps: int, guidance: float, cutoff: float) -> dict:
    return {
        "seeds": np.array(seeds, np.int64), "height": np.array([height], np.int32), "width": np.array([width], np.int32),
        "steps": np.array([steps], np.int32), "guidance_scale": np.array([guidance], np.float32),
        "guidance_cutoff": np.array([cutoff], np.float32),
    }


def denoise_stream(backend: Backend, inputs: dict, progress: Progress | None) -> np.ndarray:
    latents = None
    for out in backend.denoise(inputs):
        if "step" in out and progress is not None:
            progress(int(out["step"][0]), int(out["num_steps"][0]))
        latents = out.get("latents", latents)
    return latents


def generate_base(backend: Backend, params: Stage1Params, force_zeros: bool, progress: Progress | None = None):
    """Stage 1: prompt -> images [B, H, W, 3] uint8, and how many prompt tokens were truncated."""
    text, truncated = text_inputs(backend, params.prompt, params.negative_prompt, params.batch_size, force_zeros)
    inputs = {**text, **sampling_inputs(params.seeds, params.height, params.width, params.steps,
                                        params.guidance_scale, params.guidance_cutoff)}
    return backend.decode(denoise_stream(backend, inputs, progress)), truncated


@dataclass(frozen=True)
class DetailResult:
    image: np.ndarray  # [H, W, 3] uint8: the input with every detailed face pasted back
    mask: np.ndarray  # [H, W] uint8: the paste-back alpha (0 = the input's pixel, untouched)
    boxes: np.ndarray  # [F, 4] float32: the faces detailed, largest first


def detail_faces(backend: Backend, image: np.ndarray, params: DetailParams, force_zeros: bool,
                 progress: Progress | None = None, identity: Identity | None = None) -> DetailResult:
    """Stage 2: detect faces, magnify each crop to work_size, re-diffuse all in one batch with differential
    diffusion under a feathered face mask (change map: high = more change), downscale, paste back.
    With an `identity` every face detailed gets it after start_merge_step (from params.style_strength)."""
    h, w = image.shape[:2]
    faces = backend.detect(image, params.max_faces)
    boxes = faces["boxes"][: params.max_faces]
    if len(boxes) == 0:
        return DetailResult(image.copy(), np.zeros((h, w), np.uint8), np.zeros((0, 4), np.float32))
    landmarks = faces.get("landmarks")
    crops, alphas, changes = [], [], []
    for i, box in enumerate(boxes):
        crop = square_crop_box(box, params.margin, (h, w))
        offset = np.array([crop.x0, crop.y0], np.float32)
        marks = landmarks[i] - offset if landmarks is not None and landmarks.shape[1] else None
        local_box = box - np.concatenate([offset, offset])
        alpha = feather(face_mask((crop.size, crop.size), local_box, marks), radius=max(1.0, 0.06 * crop.size))
        crops.append(crop)
        alphas.append(alpha)
        changes.append(resize_square(alpha, params.work_size).clip(0, 1))
    pixels = np.stack([resize_square(image[c.y0:c.y1, c.x0:c.x1], params.work_size) for c in crops])
    n = len(crops)
    prompt = params.prompt if identity is None else identity.text_only_prompt
    text, _ = text_inputs(backend, prompt, params.negative_prompt, n, force_zeros)
    inputs = {
        **text,
        **sampling_inputs([params.seed + i for i in range(n)], params.work_size, params.work_size, params.steps,
                          params.guidance_scale, params.guidance_cutoff),
        "image_latents": backend.encode_image(pixels),
        "change_map": np.stack(changes)[:, None].astype(np.float32),
        "strength": np.array([params.strength], np.float32),
    }
    if identity is not None:
        inputs.update({
            "id_prompt_embeds": identity.prompt_embeds.repeat(n, 0),
            "id_pooled_prompt_embeds": identity.pooled_prompt_embeds.repeat(n, 0),
            "start_merge_step": np.array([start_merge_step(params.style_strength, steps_run(params.steps, params.strength))], np.int32),
        })
    detailed = backend.decode(denoise_stream(backend, inputs, progress))
    out, mask = image.copy(), np.zeros((h, w), np.float32)
    for crop, alpha, patch in zip(crops, alphas, detailed):
        out = paste_back(out, resize_square(patch, crop.size), crop, alpha)
        region = mask[crop.y0:crop.y1, crop.x0:crop.x1]
        np.maximum(region, alpha, out=region)
    return DetailResult(out, np.round(mask * 255).astype(np.uint8), boxes.astype(np.float32))
