"""The stage orchestration (portrait.stages) over a fake Backend that records every call and answers arrays of the
served models' shapes: what is called in which order, with what, and what comes back."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from portrait.diffusion.diffdiff import start_step
from portrait.diffusion.trigger import start_merge_step
from portrait.errors import InvalidInput
from portrait.params import MAX_PROMPT_TOKENS, DetailParams, FaceIdentities, Stage1Params
from portrait.stages import (
    Identity,
    assign_faces,
    cosine_similarity,
    detail_faces,
    face_order,
    generate_base,
    prepare_identities,
    prepare_identity,
    unit,
)
from tests.helpers import png

WIDTH, POOLED, LATENT = 8, 6, 4  # embedding width, pooled width, latent channels of the fake models
TOKENS = 77


def text_value(prompt: str) -> float:
    """A non-zero number that differs from prompt to prompt: what the fake text encoder fills its embeddings with."""
    return 1.0 + zlib.crc32(prompt.encode()) % 1000


def faces_at(*boxes) -> dict[str, np.ndarray]:
    """The face detector's answer for `boxes` (largest first); keypoints differ per face, no landmarks (Haar)."""
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    keypoints = np.stack([np.tile((b[:2] + b[2:]) / 2, (5, 1)) + np.arange(5, dtype=np.float32)[:, None] for b in boxes]) \
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
        """A face's embedding is a function of the pixel at its keypoints' centre: the same pixel, the same person."""
        self.calls.append(("embed_faces", {"image": image.copy(), "keypoints": keypoints.copy()}))
        return np.stack([person(pixel_at(image, k)) for k in keypoints])

    def fuse_identity(self, photos, id_embeds, prompt_embeds, class_tokens_mask):
        self.calls.append(("fuse_identity", {"photos": photos, "id_embeds": id_embeds, "prompt_embeds": prompt_embeds,
                                             "class_tokens_mask": class_tokens_mask}))
        return prompt_embeds + 1000.0 + id_embeds.sum()  # depends on the text and on the photos' embeddings

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


def pixel_at(image: np.ndarray, keypoints: np.ndarray) -> int:
    x, y = keypoints.mean(0).astype(int)
    return int(image[y, x].astype(int).sum())


def person(value: int) -> np.ndarray:
    """The fake ArcFace embedding [512] of a face whose pixel sums to `value` (seeded: unrelated for two values)."""
    return np.random.default_rng(value).standard_normal(512).astype(np.float32) * (1 + value % 7)


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
                           "guidance_cutoff", "progress"}
    assert inputs["progress"].tolist() == [False]  # no progress callback: the loop sends only its latents
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


def test_a_stream_left_by_a_cancelled_caller_is_closed_before_the_error_goes_on():
    """The caller's request must not end while its child stream still delivers (Triton's Python backend corrupted
    the caller's heap): denoise_stream closes the stream before the progress callback's error leaves it."""
    from portrait.stages import denoise_stream

    events = []

    class Backend:
        def denoise(self, inputs):
            assert "progress" not in inputs  # a progress callback: the steps are streamed
            try:
                for step in range(1, 4):
                    yield {"step": np.array([step]), "num_steps": np.array([3])}
                yield {"latents": np.zeros(1)}
            finally:
                events.append("closed")

    def progress(step, total):
        if step == 2:
            raise RuntimeError("cancelled by the client")

    with pytest.raises(RuntimeError, match="cancelled"):
        try:
            denoise_stream(Backend(), {}, progress)
        finally:
            events.append("error leaves")
    assert events == ["closed", "error leaves"]


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
    assert np.array_equal(fuse["id_embeds"], np.stack([person(150), person(270)]))  # photo order kept, raw
    assert fuse["class_tokens_mask"].sum() == 4
    assert np.all(fuse["prompt_embeds"] == text_value(PROMPT + " (expanded)"))
    assert np.array_equal(identity.prompt_embeds, backend.fuse_identity(photos, fuse["id_embeds"], fuse["prompt_embeds"],
                                                                        fuse["class_tokens_mask"]))  # the fused ones
    assert np.all(identity.pooled_prompt_embeds == -text_value(PROMPT + " (expanded)"))  # the expanded prompt's
    assert identity.text_only_prompt == "portrait of a woman, oil painting" and identity.photos == 2
    # the reference every face is compared with: the mean of the photos' unit embeddings, itself of unit length
    mean = unit(person(150)) + unit(person(270))
    np.testing.assert_allclose(identity.embedding, mean / np.linalg.norm(mean), rtol=1e-5)


def test_a_photo_without_a_face_fails_naming_it_and_its_identity():
    backend = FakeBackend([faces_at((4, 4, 30, 30)), faces_at((4, 4, 30, 30)), NO_FACE])
    people = FaceIdentities(((photo(50),), (photo(60), photo(90))))
    with pytest.raises(InvalidInput) as caught:
        prepare_identities(backend, people, PROMPT)
    assert caught.value.field == "id_images" and "no face found in photo 2 of identity 2" in str(caught.value)
    assert backend.names().count("fuse_identity") == 1 and backend.names()[-1] == "detect"  # identity 2 never fused


def test_an_unreadable_photo_fails_naming_it():
    backend = FakeBackend([faces_at((4, 4, 30, 30))])
    with pytest.raises(InvalidInput) as caught:
        prepare_identity(backend, [photo(50), b"not an image"], PROMPT, number=3)
    assert caught.value.field == "id_images" and "photo 2 of identity 3" in str(caught.value)
    assert "not a readable image" in str(caught.value)
    assert "fuse_identity" not in backend.names()


@pytest.mark.parametrize("prompt", ["portrait of a woman", "img of a woman", "a woman img and img"])
def test_a_prompt_without_one_proper_trigger_word_fails_before_any_model_call(prompt):
    backend = FakeBackend([faces_at((4, 4, 30, 30))])
    with pytest.raises(InvalidInput) as caught:
        prepare_identity(backend, [photo(50)], prompt)
    assert caught.value.field == "prompt" and "img" in str(caught.value)
    assert backend.calls == []


def identity(value: float = 7.0, text: str = "portrait of a woman, oil painting", who: int = 1) -> Identity:
    return Identity(np.full((1, TOKENS, WIDTH), value, np.float32), np.full((1, POOLED), value / 2, np.float32),
                    text, 1, unit(person(who)))


@pytest.mark.parametrize("steps,strength,style,merge", [(10, 0.5, 40.0, 2), (20, 1.0, 20.0, 4), (150, 1.0, 100.0, 30),
                                                        (10, 0.5, 0.0, 0)])
def test_one_identity_goes_to_the_largest_face_after_start_merge_step(steps, strength, style, merge):
    backend = FakeBackend([faces_at(BIG, SMALL)])
    params = detail(prompt=PROMPT, steps=steps, strength=strength, style_strength=style)
    result = detail_faces(backend, base_image(), params, True, identities=[identity()])
    # the text-only prompt is what the faces are conditioned on up to start_merge_step
    assert [a["prompt"] for a in backend.args("encode_text")] == ["portrait of a woman, oil painting"]
    inputs = backend.args("denoise")[0]["inputs"]
    assert np.all(inputs["prompt_embeds"] == text_value("portrait of a woman, oil painting"))
    assert inputs["id_prompt_embeds"].shape == (2, TOKENS, WIDTH) and inputs["id_pooled_prompt_embeds"].shape == (2, POOLED)
    # one face per identity: the largest gets it, the other keeps its text-only embeddings after the merge too
    assert np.all(inputs["id_prompt_embeds"][0] == 7.0) and np.all(inputs["id_pooled_prompt_embeds"][0] == 3.5)
    assert np.array_equal(inputs["id_prompt_embeds"][1], inputs["prompt_embeds"][1])
    assert np.array_equal(inputs["id_pooled_prompt_embeds"][1], inputs["pooled_prompt_embeds"][1])
    assert result.face_identity.tolist() == [0, -1] and result.similarity.shape == (2, 1)
    # PhotoMaker's rule over the steps the img2img loop runs (capped at 30)
    assert inputs["start_merge_step"].dtype == np.int32
    assert inputs["start_merge_step"].tolist() == [merge] == [start_merge_step(style, steps - start_step(steps, strength))]


def test_portrait_with_identity_calls_identity_then_stage1_then_stage2():
    """The order the portrait model runs them: identity first (a bad photo fails before diffusion), stage 1 on the
    prompt without the trigger word, stage 2 with the identity, each face embedded before and after."""
    import dataclasses

    backend = FakeBackend([faces_at((4, 4, 30, 30)), faces_at((30, 20, 70, 60))])
    params = detail(prompt=PROMPT)
    ident = prepare_identity(backend, [photo(60)], params.prompt)
    base, _ = generate_base(backend, dataclasses.replace(stage1(width=128, height=96), prompt=ident.text_only_prompt), True)
    result = detail_faces(backend, base[0], params, True, identities=[ident])
    assert backend.names() == ["detect", "embed_faces", "encode_text_with_trigger", "fuse_identity",
                               "encode_text", "denoise", "decode",
                               "detect", "embed_faces", "encode_text", "encode_image", "denoise", "decode", "embed_faces"]
    first, second = backend.args("denoise")
    assert "id_prompt_embeds" not in first["inputs"]
    assert np.array_equal(second["inputs"]["id_prompt_embeds"], ident.prompt_embeds)
    assert len(result.boxes) == 1 and np.array_equal(result.image[result.mask == 0], base[0][result.mask == 0])


# --- several identities ---------------------------------------------------------------------------------------------

LEFT, RIGHT = (8, 20, 48, 60), (70, 24, 110, 64)  # two faces of the same size: order goes left to right


def two_people(left: int = 40, right: int = 200) -> np.ndarray:
    """A base image whose two faces are flat patches of `left` and `right` (so the fake embeds them as those)."""
    image = np.full((96, 128, 3), 128, np.uint8)
    for (x0, y0, x1, y1), value in ((LEFT, left), (RIGHT, right)):
        image[y0:y1, x0:x1] = value
    return image


def two_identities(backend, faces=None, prompts=()) -> list[Identity]:
    """Identity k from `faces[k]` (one photo each; default photo(40), photo(200)), prepared as the models do."""
    faces = (photo(40), photo(200)) if faces is None else faces
    backend.detections[:0] = [faces_at((4, 4, 30, 30))] * len(faces)
    return prepare_identities(backend, FaceIdentities(tuple((f,) for f in faces), tuple(prompts)), PROMPT)


def test_swapping_two_identities_swaps_the_faces_conditioning_rows():
    rows = []
    for faces in ((photo(40), photo(200)), (photo(200), photo(40))):
        backend = FakeBackend([faces_at(RIGHT, LEFT)])  # the detector's order is not the assignment order
        people = two_identities(backend, faces)
        result = detail_faces(backend, two_people(), detail(prompt=PROMPT), True, identities=people)
        assert result.face_identity.tolist() == [1, 0]  # by order: the left face (detected second) gets identity 0
        rows.append(backend.args("denoise")[0]["inputs"])
    assert not np.array_equal(rows[0]["id_prompt_embeds"][0], rows[0]["id_prompt_embeds"][1])  # two people
    for name in ("id_prompt_embeds", "id_pooled_prompt_embeds"):
        assert np.array_equal(rows[0][name][0], rows[1][name][1]) and np.array_equal(rows[0][name][1], rows[1][name][0])
    assert np.array_equal(rows[0]["seeds"], rows[1]["seeds"])  # the faces keep their seeds: only identity moved


def test_a_faces_fused_embedding_is_its_own_identitys_alone():
    backend = FakeBackend([faces_at(LEFT, RIGHT)])
    people = two_identities(backend, (photo(40), photo(200)), ("a man img, smiling", ""))
    result = detail_faces(backend, two_people(), detail(prompt=PROMPT), True, identities=people)
    rows = backend.args("denoise")[0]["inputs"]
    for face, (photos, prompt) in enumerate((((photo(40),), "a man img, smiling"), ((photo(200),), PROMPT))):
        alone = FakeBackend([faces_at((4, 4, 30, 30))])
        own = prepare_identity(alone, photos, prompt)  # this identity, computed by itself
        assert np.array_equal(rows["id_prompt_embeds"][face], own.prompt_embeds[0])
        assert np.array_equal(rows["id_pooled_prompt_embeds"][face], own.pooled_prompt_embeds[0])
        assert np.array_equal(rows["prompt_embeds"][face], alone.text(own.text_only_prompt)["prompt_embeds"][0])
    # each face's text-only rows are its own prompt's: the face prompt for identity 1, the request's for identity 2
    assert [a["prompt"] for a in backend.args("encode_text")] == ["a man, smiling", "portrait of a woman, oil painting"]
    assert result.face_identity.tolist() == [0, 1]


def test_match_gives_each_person_their_own_identity():
    """The faces of the base image are the identity photos (the same pixels): match finds each its own, whatever the
    order of the identities and of the detector's answer."""
    for faces, detected, expected in (((photo(40), photo(200)), (LEFT, RIGHT), [0, 1]),
                                      ((photo(200), photo(40)), (LEFT, RIGHT), [1, 0]),
                                      ((photo(200), photo(40)), (RIGHT, LEFT), [0, 1])):
        backend = FakeBackend([faces_at(*detected)])
        people = two_identities(backend, faces)
        result = detail_faces(backend, two_people(), detail(prompt=PROMPT, assign="match"), True, identities=people)
        assert result.face_identity.tolist() == expected
        # before detailing each face is its own identity (cosine 1) and unlike the other
        assert np.allclose(result.similarity_before[np.arange(2), result.face_identity], 1, atol=1e-5)
        assert np.abs(result.similarity_before[np.arange(2), 1 - result.face_identity]).max() < 0.2
        rows = backend.args("denoise")[0]["inputs"]["id_prompt_embeds"]
        for face, k in enumerate(expected):
            assert np.array_equal(rows[face], people[k].prompt_embeds[0])


def test_match_with_more_faces_than_identities_leaves_the_least_alike_face_text_only():
    backend = FakeBackend([faces_at(LEFT, RIGHT, THIRD)])
    people = two_identities(backend, (photo(200),))
    result = detail_faces(backend, two_people(), detail(prompt=PROMPT, assign="match"), True, identities=people[:1])
    assert result.face_identity.tolist() == [-1, 0, -1] and result.similarity.shape == (3, 1)
    rows = backend.args("denoise")[0]["inputs"]
    assert np.array_equal(rows["id_prompt_embeds"][0], rows["prompt_embeds"][0])  # unassigned: no identity
    assert np.array_equal(rows["id_prompt_embeds"][1], people[0].prompt_embeds[0])


def test_the_similarity_is_computed_from_the_detailed_pixels():
    results = []
    for shift in (0, 1):  # the same request; the decoder's pixels differ
        backend = FakeBackend([faces_at(LEFT, RIGHT)])
        people = two_identities(backend)
        decode = backend.decode
        backend.decode = lambda latents, d=decode, s=shift: d(latents) + np.uint8(s)
        results.append(detail_faces(backend, two_people(), detail(prompt=PROMPT), True, identities=people))
        after = backend.args("embed_faces")[-1]
        assert np.array_equal(after["image"], results[-1].image)  # the output, pasted back, is what is embedded
        expected = cosine_similarity(np.stack([person(pixel_at(results[-1].image, k)) for k in after["keypoints"]]),
                                     np.stack([p.embedding for p in people]))
        np.testing.assert_allclose(results[-1].similarity, expected, rtol=1e-6)
    assert np.array_equal(results[0].similarity_before, results[1].similarity_before)
    assert not np.allclose(results[0].similarity, results[1].similarity)
    assert results[0].similarity.shape == (2, 2) and results[0].similarity.dtype == np.float32


def test_face_prompts_without_identities_go_to_the_faces_in_order():
    backend = FakeBackend([faces_at(RIGHT, LEFT, THIRD)])
    result = detail_faces(backend, two_people(), detail(), True, face_prompts=["a smiling man", ""])
    # sizes: LEFT = RIGHT > THIRD; left to right among equals: LEFT is slot 0, RIGHT slot 1 ("": the request's)
    assert result.face_identity.tolist() == [1, 0, -1]
    rows = backend.args("denoise")[0]["inputs"]["prompt_embeds"]
    assert [float(r[0, 0]) for r in rows] == [text_value(detail().prompt), text_value("a smiling man"),
                                              text_value(detail().prompt)]
    assert "id_prompt_embeds" not in backend.args("denoise")[0]["inputs"]
    assert result.similarity.shape == (3, 0) and "embed_faces" not in backend.names()


@pytest.mark.parametrize("boxes,ranks", [
    ([(0, 0, 10, 10), (0, 0, 20, 20)], [1, 0]),  # largest first
    ([(50, 0, 60, 10), (0, 40, 10, 50), (0, 0, 10, 10)], [2, 1, 0]),  # equal: left to right, then top to bottom
])
def test_face_order(boxes, ranks):
    assert face_order(np.array(boxes, np.float32)).tolist() == ranks


def test_assign_faces_by_match_is_the_best_total_not_greedy():
    similarity = np.array([[0.9, 0.8], [0.85, 0.1]], np.float32)  # greedy would give face 0 identity 0, face 1 only 0.1
    assert assign_faces("match", np.zeros((2, 4), np.float32), 2, similarity).tolist() == [1, 0]
    assert assign_faces("order", np.array([[0, 0, 5, 5], [0, 0, 9, 9]], np.float32), 1).tolist() == [-1, 0]
