"""Stage 1 and stage 2 as sequences of model calls, over any `Backend` (Triton BLS in the models).

Kept free of torch: the BLS models that run this (stage1, face_detailer) stay light processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from portrait.diffusion.trigger import start_merge_step, text_only_prompt
from portrait.errors import InvalidInput
from portrait.images import decode_image
from portrait.models.masks import face_mask, feather, paste_back, resize_square, square_crop_box
from portrait.params import MAX_PROMPT_TOKENS, DetailParams, FaceIdentities, Stage1Params, negative_is_zeros, steps_run

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
    # [512] unit vector: the mean of the photos' unit ArcFace embeddings, what every face is compared with
    embedding: np.ndarray = field(default_factory=lambda: np.zeros(512, np.float32))


def prepare_identity(backend: Backend, photos: Sequence[bytes], prompt: str, number: int = 1) -> Identity:
    """Identity `number`'s photos (encoded, 1..MAX_ID_IMAGES, checked by FaceIdentities) -> fused prompt embeddings:
    the largest face of each photo is found, aligned and embedded (ArcFace), the prompt's class token expanded
    (text_encoder), then both fused (id_encoder). Fails before any diffusion: a prompt without the trigger word, a
    photo without a face."""
    text_only = text_only_prompt(prompt)
    embeds = []
    for i, data in enumerate(photos):
        which = f"photo {i + 1} of identity {number}"
        try:
            image = decode_image(data, "id_images")
        except InvalidInput as error:
            raise InvalidInput("id_images", f"{which} {error.message}") from None
        faces = backend.detect(image, 1)
        if len(faces["boxes"]) == 0:
            raise InvalidInput("id_images", f"no face found in {which}; use a photo with the face clearly visible")
        embeds.append(backend.embed_faces(image, faces["keypoints"][:1])[0])
    embeds = np.stack(embeds).astype(np.float32)  # [N, 512] raw: PhotoMaker takes them unnormalised
    text = backend.encode_text_with_trigger(prompt, len(photos))
    fused = backend.fuse_identity(list(photos), embeds, text["prompt_embeds"], text["class_tokens_mask"])
    return Identity(fused, text["pooled_prompt_embeds"], text_only, len(photos), unit(unit(embeds).mean(0)))


def prepare_identities(backend: Backend, identities: FaceIdentities, prompt: str) -> list[Identity]:
    """Each identity with its own prompt (its face prompt, else the request's), in identity order."""
    return [prepare_identity(backend, group, identities.prompt_of(k, prompt), k + 1)
            for k, group in enumerate(identities.photos)]


# --- which face gets whom -----------------------------------------------------------------------------------------

def unit(vectors: np.ndarray) -> np.ndarray:
    """L2-normalised along the last axis (a zero vector stays zero)."""
    norm = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.where(norm > 0, norm, 1)).astype(np.float32)


def cosine_similarity(faces: np.ndarray, identities: np.ndarray) -> np.ndarray:
    """[F, 512] face embeddings x [K, 512] identity embeddings -> [F, K] cosine similarity (ArcFace's metric)."""
    return unit(faces) @ unit(identities).T


def face_order(boxes: np.ndarray) -> np.ndarray:
    """[F] the rank of each face: largest first, equal sizes left to right, then top to bottom (ComfyUI Impact
    Pack's orders, in that priority)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.lexsort((boxes[:, 1], boxes[:, 0], -area))  # the last key sorts first
    ranks = np.empty(len(boxes), np.int32)
    ranks[order] = np.arange(len(boxes))
    return ranks


def assign_faces(assign: str, boxes: np.ndarray, slots: int, similarity: np.ndarray | None = None) -> np.ndarray:
    """[F] the identity (or face-prompt slot) 0..slots-1 of each face, -1 for none; one face per identity.
    "order": the face of rank k (face_order) gets slot k. "match": the assignment that maximises the summed cosine
    similarity [F, K] (Hungarian, scipy's linear_sum_assignment); with more faces than identities the least alike
    stay unassigned."""
    chosen = np.full(len(boxes), -1, np.int32)
    if assign == "order":
        ranks = face_order(boxes)
        chosen[ranks < slots] = ranks[ranks < slots]
        return chosen
    from scipy.optimize import linear_sum_assignment

    faces, people = linear_sum_assignment(similarity, maximize=True)
    chosen[faces] = people
    return chosen


def text_inputs(backend: Backend, prompt: str | Sequence[str], negative: str, n: int,
                force_zeros: bool) -> tuple[dict, int]:
    """The four conditioning tensors for `n` rows, from one prompt or one per row (each distinct text encoded
    once); zeros for an empty negative (force_zeros_for_empty_prompt). Also: the tokens over the limit (the most of
    any row)."""
    prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
    encoded = {text: backend.encode_text(text) for text in dict.fromkeys(prompts)}
    first = encoded[prompts[0]]
    neg = {k: np.zeros_like(v) for k, v in first.items()} if negative_is_zeros(negative, force_zeros) else backend.encode_text(negative)
    inputs = {
        "prompt_embeds": np.concatenate([encoded[p]["prompt_embeds"] for p in prompts]),
        "pooled_prompt_embeds": np.concatenate([encoded[p]["pooled_prompt_embeds"] for p in prompts]),
        "negative_prompt_embeds": neg["prompt_embeds"].repeat(n, 0),
        "negative_pooled_prompt_embeds": neg["pooled_prompt_embeds"].repeat(n, 0),
    }
    over = max(int(e["token_count"].reshape(-1)[0]) for e in encoded.values()) - MAX_PROMPT_TOKENS
    return inputs, max(0, over)


def sampling_inputs(seeds: list[int], height: int, width: int, steps: int, guidance: float, cutoff: float) -> dict:
    return {
        "seeds": np.array(seeds, np.int64), "height": np.array([height], np.int32), "width": np.array([width], np.int32),
        "steps": np.array([steps], np.int32), "guidance_scale": np.array([guidance], np.float32),
        "guidance_cutoff": np.array([cutoff], np.float32),
    }


def denoise_stream(backend: Backend, inputs: dict, progress: Progress | None) -> np.ndarray:
    latents = None
    if progress is None:  # nobody reads the steps: only the final latents come back
        inputs = {**inputs, "progress": np.array([False])}
    stream = backend.denoise(inputs)
    try:
        for out in stream:
            if "step" in out and progress is not None:
                progress(int(out["step"][0]), int(out["num_steps"][0]))  # may raise: a cancelled client
            latents = out.get("latents", latents)
    finally:  # closed here, before the caller answers: a stream left open would still deliver into a finished request
        close = getattr(stream, "close", None)
        if close is not None:
            close()
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
    face_identity: np.ndarray | None = None  # [F] int32: the identity (or face-prompt slot) each face got, -1 none
    similarity: np.ndarray | None = None  # [F, K] float32: cosine of each detailed face to each identity
    similarity_before: np.ndarray | None = None  # [F, K] float32: the same for the faces before detailing

    def __post_init__(self):
        f = len(self.boxes)
        for name, value in (("face_identity", np.full(f, -1, np.int32)), ("similarity", np.zeros((f, 0), np.float32)),
                            ("similarity_before", np.zeros((f, 0), np.float32))):
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)

    def identity_outputs(self) -> dict[str, np.ndarray]:
        """The per-face identity check, as the face_detailer and portrait models return it."""
        return {"face_identity": self.face_identity.astype(np.int32), "similarity": self.similarity.astype(np.float32),
                "similarity_before": self.similarity_before.astype(np.float32)}

    def assigned_similarity(self) -> np.ndarray:
        """Each face's similarity to the identity it was given (faces with one only): what the metric observes."""
        rows = np.flatnonzero(self.face_identity >= 0) if self.similarity.shape[1] else np.zeros(0, int)
        return self.similarity[rows, self.face_identity[rows]]


def detail_faces(backend: Backend, image: np.ndarray, params: DetailParams, force_zeros: bool,
                 progress: Progress | None = None, identities: Sequence[Identity] = (),
                 face_prompts: Sequence[str] = ()) -> DetailResult:
    """Stage 2: detect faces, magnify each crop to work_size, re-diffuse all in one batch with differential
    diffusion under a feathered face mask (change map: high = more change), downscale, paste back.
    With `identities` each gets one face (params.assign: order or match), whose row carries that identity's fused
    embeddings after start_merge_step (from params.style_strength); a face left without one is detailed on the
    text-only prompt. Each face is embedded before and after, and compared with every identity.
    Without identities, `face_prompts[k]` conditions the face of rank k (face_order); "" or none: params.prompt."""
    h, w = image.shape[:2]
    faces = backend.detect(image, params.max_faces)
    boxes = faces["boxes"][: params.max_faces]
    if len(boxes) == 0:
        return DetailResult(image.copy(), np.zeros((h, w), np.uint8), np.zeros((0, 4), np.float32),
                            similarity=np.zeros((0, len(identities)), np.float32),
                            similarity_before=np.zeros((0, len(identities)), np.float32))
    keypoints = faces["keypoints"][: len(boxes)]
    references = np.stack([i.embedding for i in identities]) if identities else None
    before = cosine_similarity(backend.embed_faces(image, keypoints), references) if identities else None
    chosen = assign_faces(params.assign, boxes, len(identities) or len(face_prompts), before)
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
    if identities:  # a face without an identity: the request's prompt, text only
        prompts = [identities[k].text_only_prompt if k >= 0 else text_only_prompt(params.prompt) for k in chosen]
    else:
        prompts = [face_prompts[k] if 0 <= k < len(face_prompts) and face_prompts[k] else params.prompt for k in chosen]
    text, _ = text_inputs(backend, prompts, params.negative_prompt, n, force_zeros)
    inputs = {
        **text,
        **sampling_inputs([params.seed + i for i in range(n)], params.work_size, params.work_size, params.steps,
                          params.guidance_scale, params.guidance_cutoff),
        "image_latents": backend.encode_image(pixels),
        "change_map": np.stack(changes)[:, None].astype(np.float32),
        "strength": np.array([params.strength], np.float32),
    }
    if identities:  # each face's row its own identity's; a row without one keeps its text-only embeddings
        inputs.update({
            "id_prompt_embeds": np.concatenate([identities[k].prompt_embeds if k >= 0 else text["prompt_embeds"][i:i + 1]
                                                for i, k in enumerate(chosen)]),
            "id_pooled_prompt_embeds": np.concatenate([identities[k].pooled_prompt_embeds if k >= 0
                                                       else text["pooled_prompt_embeds"][i:i + 1]
                                                       for i, k in enumerate(chosen)]),
            "start_merge_step": np.array([start_merge_step(params.style_strength, steps_run(params.steps, params.strength))], np.int32),
        })
    detailed = backend.decode(denoise_stream(backend, inputs, progress))
    out, mask = image.copy(), np.zeros((h, w), np.float32)
    for crop, alpha, patch in zip(crops, alphas, detailed):
        out = paste_back(out, resize_square(patch, crop.size), crop, alpha)
        region = mask[crop.y0:crop.y1, crop.x0:crop.x1]
        np.maximum(region, alpha, out=region)
    # the check on every output: the detailed pixels, embedded where the faces were found
    after = cosine_similarity(backend.embed_faces(out, keypoints), references) if identities else None
    return DetailResult(out, np.round(mask * 255).astype(np.uint8), boxes.astype(np.float32), chosen, after, before)
