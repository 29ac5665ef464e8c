"""The stage orchestration (portrait.stages) over a fake Backend that records every call and answers arrays of the
served models' shapes: what is called in which order, with what, and what comes back."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from portrait.diffusion.diffdiff import start_step
from portrait.diffusion.trigger import start_merge_step
from portrait.errors import InvalidInput
from portrait.params import MAX_ID_IMAGES, MAX_PROMPT_TOKENS, DetailParams, Stage1Params
from portrait.stages import Identity, detail_faces, generate_base, prepare_identity
from tests.helpers import png

WIDTH, POOLED, LATENT = 8, 6, 4  # embedding width, pooled width, latent channels of the fake models
TOKENS = 77


def text_value(prompt: str) -> float:
    """A non-zero number that differs from prompt to prompt: what the fake text encoder fills its embeddings with."""
    return 1.0 + zlib.crc32(prompt.encode()) % 1000


def faces_at(*boxes) -> dict[str, np.ndarray]:
    """The face detector's answer for `boxes` (largest first); keypoints differ per face, no landmarks (Haar)."""
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    keypoints = np.stack([np.tile(b[:2], (5, 1)) + np.arange(5, dtype=np.float32)[:, None] for b in boxes]) \
        if len(boxes) else np.zeros((0, 5, 2), np.float32)
    return {"boxes": boxes, "scores": np.linspace(0.9, 0.5, len(boxes)).astype(np.float32),
            "keypoints": keypoints, "landmarks": np.zeros((len(boxes), 0, 2), np.float32)}


NO_FACE = faces_at()


class FakeBackend:
    """portrait.stages.Backend: records (name, arguments) in `calls`; `detections` are the face detector's answers,
    one per detect call in order (the last repeats). Denoise reports the steps the loop would run, then latents
    holding each row's seed; decode turns a row into a flat image of (seed % 200 + 30)."""

    def __init__(self, detections=(NO_FACE,), token_count: int = 12):
        self.calls: list[tuple[str, dict]] = []
        self.detections = list(detections)
        self.token_count = token_count

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def args(self, name: str) -> list[dict]:
        return [args for n, args in self.calls if n == name]

    def text(self, prompt: str) -> dict[str, np.ndarray]:
        v = text_value(prompt)
        return {"prompt_embeds": np.full((1, TOKENS, WIDTH), v, np.float32),
                "pooled_prompt_embeds": np.full((1, POOLED), -v, np.float32),
                "token_count": np.array([[self.token_count]], np.int32)}

    def encode_text(self, prompt):
        self.calls.append(("encode_text", {"prompt": prompt}))
        return self.text(prompt)

    def encode_text_with_trigger(self, prompt, num_id_images):
        self.calls.append(("encode_text_with_trigger", {"prompt": prompt, "num_id_images": num_id_images}))
        mask = np.zeros((1, TOKENS), bool)
        mask[0, 3:3 + 2 * num_id_images] = True
        return {**self.text(prompt + " (expanded)"), "class_tokens_mask": mask}

    def detect(self, image, max_faces):
        self.calls.append(("detect", {"image": image.copy(), "max_faces": max_faces}))
        return self.detections.pop(0) if len(self.detections) > 1 else self.detections[0]

    def embed_faces(self, image, keypoints):
        self.calls.append(("embed_faces", {"image": image.copy(), "keypoints": keypoints.copy()}))
        return np.full((len(keypoints), 512), float(image.mean()), np.float32)

    def fuse_identity(self, photos, id_embeds, prompt_embeds, class_tokens_mask):
        self.calls.append(("fuse_identity", {"photos": photos, "id_embeds": id_embeds, "prompt_embeds": prompt_embeds,
                                             "class_tokens_mask": class_tokens_mask}))
        return prompt_embeds + 1000.0

    def encode_image(self, images):
        self.calls.append(("encode_image", {"images": images.copy()}))
        n, h, w, _ = images.shape
        return np.full((n, LATENT, h // 8, w // 8), 0.5, np.float32)

    def denoise(self, inputs):
        self.calls.append(("denoise", {"inputs": dict(inputs)}))
        seeds, steps = inputs["seeds"], int(inputs["steps"][0])
        rows = len(seeds)
        for name in ("prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds"):
            assert inputs[name].shape[0] == rows, name
        run = steps - start_step(steps, float(inputs["strength"][0])) if "strength" in inputs else steps
        for i in range(run):
            yield {"step": np.array([i + 1], np.int32), "num_steps": np.array([run], np.int32)}
        h, w = int(inputs["height"][0]) // 8, int(inputs["width"][0]) // 8
        yield {"latents": np.broadcast_to(seeds.astype(np.float32)[:, None, None, None], (rows, LATENT, h, w)).copy()}

    def decode(self, latents):
        self.calls.append(("decode", {"latents": latents.copy()}))
        n, _, h, w = latents.shape
        values = (latents[:, 0, 0, 0].astype(np.int64) % 200 + 30).astype(np.uint8)
        return np.broadcast_to(values[:, None, None, None], (n, 8 * h, 8 * w, 3)).copy()


def patch_value(seed: int) -> int:
    return seed % 200 + 30


# --- stage 1 --------------------------------------------------------------------------------------------------------

def stage1(**kw) -> Stage1Params:
    return Stage1Params(**{**dict(prompt="portrait of a woman", width=96, height=64, steps=5, seed=40,
                                  guidance_scale=6.5, guidance_cutoff=0.25), **kw})


def test_stage1_calls_text_denoise_decode_in_order_with_the_request_values():
    backend = FakeBackend()
    params = stage1(negative_prompt="blurry", batch_size=3)
    images, truncated = generate_base(backend, params, force_zeros=True)
    assert backend.names() == ["encode_text", "encode_text", "denoise", "decode"]
    assert [a["prompt"] for a in backend.args("encode_text")] == ["portrait of a woman", "blurry"]
    inputs = backend.args("denoise")[0]["inputs"]
    assert inputs["seeds"].tolist() == [40, 41, 42] and inputs["seeds"].dtype == np.int64  # one seed per image
    assert inputs["height"].tolist() == [64] and inputs["width"].tolist() == [96]
    assert inputs["steps"].tolist() == [5] and inputs["steps"].dtype == np.int32
    assert inputs["guidance_scale"].tolist() == [6.5] and inputs["guidance_cutoff"].tolist() == [0.25]
    assert inputs["guidance_scale"].dtype == inputs["guidance_cutoff"].dtype == np.float32
    assert inputs["prompt_embeds"].shape == (3, TOKENS, WIDTH) and inputs["pooled_prompt_embeds"].shape == (3, POOLED)
    assert np.all(inputs["prompt_embeds"] == text_value("portrait of a woman"))  # every row the prompt's
    assert np.all(inputs["negative_prompt_embeds"] == text_value("blurry"))
    assert np.all(inputs["negative_pooled_prompt_embeds"] == -text_value("blurry"))
    # text to image: no image, change map, strength or identity goes to the loop
    assert set(inputs) == {"prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds",
                           "negative_pooled_prompt_embeds", "seeds", "height", "width", "steps", "guidance_scale",
                           "guidance_cutoff"}
    # the loop's final latents go to the decoder, whose images come back: one per seed, in seed order
    assert backend.args("decode")[0]["latents"].shape == (3, LATENT, 8, 12)
    assert images.shape == (3, 64, 96, 3) and images.dtype == np.uint8
    assert [int(images[i, 0, 0, 0]) for i in range(3)] == [patch_value(s) for s in (40, 41, 42)]
    assert truncated == 0


@pytest.mark.parametrize("negative,force_zeros,zeros", [("", True, True), ("", False, False), ("blurry", True, False)])
def test_negative_embeddings_are_zeros_only_for_an_empty_negative_when_the_checkpoint_says_so(negative, force_zeros, zeros):
    backend = FakeBackend()
    generate_base(backend, stage1(negative_prompt=negative, batch_size=2), force_zeros)
    encoded = [a["prompt"] for a in backend.args("encode_text")]
    inputs = backend.args("denoise")[0]["inputs"]
    assert inputs["negative_prompt_embeds"].shape == inputs["prompt_embeds"].shape
    assert inputs["negative_pooled_prompt_embeds"].shape == inputs["pooled_prompt_embeds"].shape
    if zeros:
        assert encoded == ["portrait of a woman"]  # the empty negative is not encoded at all
        assert not inputs["negative_prompt_embeds"].any() and not inputs["negative_pooled_prompt_embeds"].any()
    else:
        assert encoded == ["portrait of a woman", negative]  # "" is encoded like any text
        assert np.all(inputs["negative_prompt_embeds"] == text_value(negative))


@pytest.mark.parametrize("tokens,truncated", [(12, 0), (MAX_PROMPT_TOKENS, 0), (MAX_PROMPT_TOKENS + 13, 13)])
def test_stage1_reports_the_prompt_tokens_over_the_limit(tokens, truncated):
    assert generate_base(FakeBackend(token_count=tokens), stage1(), True)[1] == truncated


def test_stage1_reports_every_step_in_order():
    seen = []
    generate_base(FakeBackend(), stage1(steps=7), True, lambda step, total: seen.append((step, total)))
    assert seen == [(i, 7) for i in range(1, 8)]
    generate_base(FakeBackend(), stage1(steps=7), True)  # no progress callback: nothing to call


# --- stage 2 --------------------------------------------------------------------------------------------------------

BIG, SMALL, THIRD = (20, 16, 60, 66), (80, 30, 108, 58), (4, 70, 20, 90)


def base_image() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8)


def detail(**kw) -> DetailParams:
    return DetailParams(**{**dict(prompt="portrait photo, detailed face", steps=10, strength=0.5, seed=70,
                                  work_size=64, max_faces=4, guidance_scale=4.0, guidance_cutoff=0.1), **kw})


def test_no_face_returns_the_image_unchanged_and_runs_nothing_else():
    backend, image = FakeBackend([NO_FACE]), base_image()
    result = detail_faces(backend, image, detail(max_faces=3), True, lambda *a: pytest.fail("no step should run"))
    assert backend.names() == ["detect"] and backend.args("detect")[0]["max_faces"] == 3
    assert np.array_equal(result.image, image) and result.image is not image
    assert result.mask.shape == (96, 128) and result.mask.dtype == np.uint8 and not result.mask.any()
    assert result.boxes.shape == (0, 4) and result.boxes.dtype == np.float32


def test_faces_are_detailed_in_one_batch_with_a_seed_each():
    backend, image = FakeBackend([faces_at(BIG, SMALL)]), base_image()
    params = detail(negative_prompt="blurry")
    result = detail_faces(backend, image.copy(), params, True)
    assert backend.names() == ["detect", "encode_text", "encode_text", "encode_image", "denoise", "decode"]
    assert np.array_equal(backend.args("detect")[0]["image"], image) and backend.args("detect")[0]["max_faces"] == 4
    assert [a["prompt"] for a in backend.args("encode_text")] == [params.prompt, "blurry"]
    crops = backend.args("encode_image")[0]["images"]
    assert crops.shape == (2, 64, 64, 3) and crops.dtype == np.uint8  # each face's crop magnified to work_size
    inputs = backend.args("denoise")[0]["inputs"]
    assert inputs["seeds"].tolist() == [70, 71]  # face i uses seed + i
    assert inputs["height"].tolist() == inputs["width"].tolist() == [64]
    assert inputs["steps"].tolist() == [10] and inputs["strength"].tolist() == [0.5]
    assert inputs["strength"].dtype == np.float32
    assert inputs["guidance_scale"].tolist() == [4.0] and inputs["guidance_cutoff"].tolist() == [np.float32(0.1)]
    assert inputs["prompt_embeds"].shape == (2, TOKENS, WIDTH)
    assert np.all(inputs["negative_prompt_embeds"] == text_value("blurry"))
    assert np.array_equal(inputs["image_latents"], np.full((2, LATENT, 8, 8), 0.5, np.float32))  # encode_image's
    assert "start_merge_step" not in inputs and "id_prompt_embeds" not in inputs  # no identity
    assert np.array_equal(result.boxes, np.array([BIG, SMALL], np.float32)) and result.boxes.dtype == np.float32
    assert backend.args("decode")[0]["latents"].shape == (2, LATENT, 8, 8)


def test_the_change_map_is_the_feathered_face_mask_high_where_the_face_is():
    backend = FakeBackend([faces_at(BIG, SMALL)])
    result = detail_faces(backend, base_image(), detail(), True)
    change = backend.args("denoise")[0]["inputs"]["change_map"]
    assert change.shape == (2, 1, 64, 64) and change.dtype == np.float32
    assert change.min() >= 0 and change.max() <= 1
    for face in change[:, 0]:
        assert face[32, 32] == pytest.approx(1, abs=1e-3)  # the face (centred in its crop) changes fully
        assert face[0, 0] == face[0, -1] == face[-1, 0] == face[-1, -1] == 0  # the crop's corners are kept
        assert 0 < face.mean() < 1
    # the returned mask is the same feathered alpha at the image's scale: full at each face's centre, 0 far away
    for x0, y0, x1, y1 in (BIG, SMALL):
        assert result.mask[(y0 + y1) // 2, (x0 + x1) // 2] == 255
    assert result.mask[0, 127] == result.mask[95, 127] == 0


def test_pixels_outside_the_face_mask_are_unchanged_and_the_faces_get_their_patch():
    backend, image = FakeBackend([faces_at(BIG, SMALL)]), base_image()
    result = detail_faces(backend, image, detail(), True)
    assert result.image.shape == image.shape and result.image.dtype == np.uint8
    outside = result.mask == 0
    assert outside.sum() > image.shape[0] * image.shape[1] // 3
    assert np.array_equal(result.image[outside], image[outside])
    assert np.array_equal(image, base_image())  # the input itself is left alone
    # where the alpha is full the decoded patch (a flat colour per face, from its seed) replaced the pixels
    for (x0, y0, x1, y1), seed in zip((BIG, SMALL), (70, 71)):
        assert np.all(result.image[(y0 + y1) // 2, (x0 + x1) // 2] == patch_value(seed))
    changed = np.any(result.image != image, axis=-1)
    assert not changed[outside].any() and changed[result.mask == 255].mean() > 0.95


def test_at_most_max_faces_are_detailed_largest_first():
    backend = FakeBackend([faces_at(BIG, SMALL, THIRD)])  # a detector that answers more than it was asked for
    result = detail_faces(backend, base_image(), detail(max_faces=2), True)
    assert backend.args("detect")[0]["max_faces"] == 2
    assert np.array_equal(result.boxes, np.array([BIG, SMALL], np.float32))
    assert backend.args("denoise")[0]["inputs"]["seeds"].tolist() == [70, 71]
    x0, y0, x1, y1 = THIRD
    assert not result.mask[y0:y1, x0:x1].any()


def test_stage2_negative_zeros_rule_and_progress():
    backend, seen = FakeBackend([faces_at(BIG)]), []
    detail_faces(backend, base_image(), detail(steps=10, strength=0.5), True, lambda step, total: seen.append((step, total)))
    assert [a["prompt"] for a in backend.args("encode_text")] == ["portrait photo, detailed face"]
    inputs = backend.args("denoise")[0]["inputs"]
    assert not inputs["negative_prompt_embeds"].any() and inputs["negative_prompt_embeds"].shape == (1, TOKENS, WIDTH)
    assert seen == [(i, 5) for i in range(1, 6)]  # the img2img steps that run: int(10 x 0.5)
    backend = FakeBackend([faces_at(BIG)])
    detail_faces(backend, base_image(), detail(), False)
    assert [a["prompt"] for a in backend.args("encode_text")] == ["portrait photo, detailed face", ""]


# --- identity -------------------------------------------------------------------------------------------------------

PROMPT = "portrait of a woman img, oil painting"


def photo(value: int) -> bytes:
    return png(np.full((48, 40, 3), value, np.uint8))


def test_prepare_identity_embeds_the_largest_face_of_each_photo_then_fuses():
    two = faces_at((4, 4, 30, 30), (30, 30, 40, 40))
    backend = FakeBackend([two, faces_at((8, 8, 20, 20))])
    photos = [photo(50), photo(90)]
    identity = prepare_identity(backend, photos, PROMPT)
    assert backend.names() == ["detect", "embed_faces", "detect", "embed_faces", "encode_text_with_trigger", "fuse_identity"]
    assert [a["max_faces"] for a in backend.args("detect")] == [1, 1]
    assert backend.args("detect")[0]["image"].shape == (48, 40, 3)  # the decoded photo
    embedded = backend.args("embed_faces")
    assert np.array_equal(embedded[0]["keypoints"], two["keypoints"][:1])  # the first (largest) face only
    assert embedded[1]["image"][0, 0].tolist() == [90, 90, 90]
    assert backend.args("encode_text_with_trigger") == [{"prompt": PROMPT, "num_id_images": 2}]
    fuse = backend.args("fuse_identity")[0]
    assert fuse["photos"] == photos
    assert fuse["id_embeds"].shape == (2, 512) and fuse["id_embeds"].dtype == np.float32
    assert fuse["id_embeds"][:, 0].tolist() == [50.0, 90.0]  # photo order kept
    assert fuse["class_tokens_mask"].sum() == 4
    assert np.all(fuse["prompt_embeds"] == text_value(PROMPT + " (expanded)"))
    assert np.array_equal(identity.prompt_embeds, fuse["prompt_embeds"] + 1000.0)  # the fused embeddings
    assert np.all(identity.pooled_prompt_embeds == -text_value(PROMPT + " (expanded)"))  # the expanded prompt's
    assert identity.text_only_prompt == "portrait of a woman, oil painting" and identity.photos == 2


def test_a_photo_without_a_face_fails_naming_it_before_any_fusion():
    backend = FakeBackend([faces_at((4, 4, 30, 30)), NO_FACE])
    with pytest.raises(InvalidInput) as caught:
        prepare_identity(backend, [photo(50), photo(90)], PROMPT)
    assert caught.value.field == "id_images" and "no face found in photo 2 of 2" in str(caught.value)
    assert backend.names() == ["detect", "embed_faces", "detect"]


def test_an_unreadable_photo_fails_naming_it():
    backend = FakeBackend([faces_at((4, 4, 30, 30))])
    with pytest.raises(InvalidInput) as caught:
        prepare_identity(backend, [photo(50), b"not an image"], PROMPT)
    assert caught.value.field == "id_images" and "photo 2 of 2" in str(caught.value)
    assert "not a readable image" in str(caught.value)
    assert "fuse_identity" not in backend.names()


@pytest.mark.parametrize("photos,limit,message", [
    ([], MAX_ID_IMAGES, "is empty"),
    ([b"x"] * (MAX_ID_IMAGES + 1), MAX_ID_IMAGES, f"at most {MAX_ID_IMAGES} identity photos, got {MAX_ID_IMAGES + 1}"),
    ([b"x"] * 3, 2, "at most 2 identity photos, got 3"),
])
def test_photo_count_is_checked_before_any_model_call(photos, limit, message):
    backend = FakeBackend([faces_at((4, 4, 30, 30))])
    with pytest.raises(InvalidInput) as caught:
        prepare_identity(backend, photos, PROMPT, limit)
    assert caught.value.field == "id_images" and message in str(caught.value)
    assert backend.calls == []


@pytest.mark.parametrize("prompt", ["portrait of a woman", "img of a woman", "a woman img and img"])
def test_a_prompt_without_one_proper_trigger_word_fails_before_any_model_call(prompt):
    backend = FakeBackend([faces_at((4, 4, 30, 30))])
    with pytest.raises(InvalidInput) as caught:
        prepare_identity(backend, [photo(50)], prompt)
    assert caught.value.field == "prompt" and "img" in str(caught.value)
    assert backend.calls == []


def identity(photos: int = 1) -> Identity:
    return Identity(np.full((1, TOKENS, WIDTH), 7.0, np.float32), np.full((1, POOLED), 3.0, np.float32),
                    "portrait of a woman, oil painting", photos)


@pytest.mark.parametrize("steps,strength,style,merge", [(10, 0.5, 40.0, 2), (20, 1.0, 20.0, 4), (150, 1.0, 100.0, 30),
                                                        (10, 0.5, 0.0, 0)])
def test_identity_goes_to_every_face_after_start_merge_step(steps, strength, style, merge):
    backend = FakeBackend([faces_at(BIG, SMALL)])
    params = detail(prompt=PROMPT, steps=steps, strength=strength, style_strength=style)
    detail_faces(backend, base_image(), params, True, identity=identity())
    # the text-only prompt is what the faces are conditioned on up to start_merge_step
    assert [a["prompt"] for a in backend.args("encode_text")] == ["portrait of a woman, oil painting"]
    inputs = backend.args("denoise")[0]["inputs"]
    assert np.all(inputs["prompt_embeds"] == text_value("portrait of a woman, oil painting"))
    assert inputs["id_prompt_embeds"].shape == (2, TOKENS, WIDTH) and np.all(inputs["id_prompt_embeds"] == 7.0)
    assert inputs["id_pooled_prompt_embeds"].shape == (2, POOLED) and np.all(inputs["id_pooled_prompt_embeds"] == 3.0)
    # PhotoMaker's rule over the steps the img2img loop runs (capped at 30)
    assert inputs["start_merge_step"].dtype == np.int32
    assert inputs["start_merge_step"].tolist() == [merge] == [start_merge_step(style, steps - start_step(steps, strength))]


def test_portrait_with_identity_calls_identity_then_stage1_then_stage2():
    """The order the portrait model runs them: identity first (a bad photo fails before diffusion), stage 1 on the
    prompt without the trigger word, stage 2 with the identity."""
    import dataclasses

    backend = FakeBackend([faces_at((4, 4, 30, 30)), faces_at((30, 20, 70, 60))])
    params = detail(prompt=PROMPT)
    ident = prepare_identity(backend, [photo(60)], params.prompt)
    base, _ = generate_base(backend, dataclasses.replace(stage1(width=128, height=96), prompt=ident.text_only_prompt), True)
    result = detail_faces(backend, base[0], params, True, identity=ident)
    assert backend.names() == ["detect", "embed_faces", "encode_text_with_trigger", "fuse_identity",
                               "encode_text", "denoise", "decode",
                               "detect", "encode_text", "encode_image", "denoise", "decode"]
    first, second = backend.args("denoise")
    assert "id_prompt_embeds" not in first["inputs"]
    assert np.array_equal(second["inputs"]["id_prompt_embeds"], ident.prompt_embeds)
    assert len(result.boxes) == 1 and np.array_equal(result.image[result.mask == 0], base[0][result.mask == 0])
