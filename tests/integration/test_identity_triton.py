"""Identity (PhotoMaker V2) through the Triton models: face_embedder, id_encoder via face_detailer and portrait,
the face-mask and start_merge_step guarantees, and each bad identity input with its message."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from clients.triton import DETAIL_TYPES, field_arrays
from portrait.errors import InvalidInput
from portrait.params import DetailParams, Stage1Params
from tests.helpers import png, sample_photos

PROMPT = "photo of a person img, detailed skin"


@pytest.fixture(scope="module")
def photos():
    from portrait.models.faces import HaarFaceDetector

    astronaut, group = sample_photos()
    x0, y0, x1, y1 = HaarFaceDetector()(group, 8).boxes[-1].astype(int)  # another person: a face of the group photo
    pad = (x1 - x0) // 2
    person = group[max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad]
    return {"astronaut": png(astronaut), "group": png(person), "target": png(group),
            "blank": png(np.full((96, 96, 3), 128, np.uint8))}


def detail_params(**over) -> DetailParams:
    values = dict(prompt=PROMPT, steps=4, strength=1.0, max_faces=2, work_size=128, seed=3, style_strength=20.0)
    return DetailParams(**{**values, **over})


def test_face_embedder_matches_in_process(grpc_client, models_dir):
    from portrait.models.faces import FaceEmbedder, HaarFaceDetector

    photo = sample_photos()[0]
    keypoints = HaarFaceDetector()(photo, 1).keypoints
    out = grpc_client.infer("face_embedder", {"image": ("UINT8", photo), "keypoints": ("FP32", keypoints)},
                            ["embeddings", "aligned"])
    embeddings, aligned = FaceEmbedder(models_dir / "insightface" / "w600k_r50.onnx")(photo, keypoints)
    assert out["embeddings"].shape == (1, 512) and out["aligned"].shape == (1, 112, 112, 3)
    np.testing.assert_allclose(out["embeddings"], embeddings, rtol=1e-5, atol=1e-5)
    assert np.array_equal(out["aligned"], aligned)


def test_identity_changes_only_the_face_and_only_after_start_merge_step(grpc_client, photos):
    target = photos["target"]
    without = grpc_client.detail(target, detail_params(prompt="photo of a person, detailed skin"))
    with_id = grpc_client.detail(target, detail_params(), faces=[photos["astronaut"]])
    other_id = grpc_client.detail(target, detail_params(), faces=[photos["group"]])
    assert with_id.faces_found == without.faces_found == 2
    assert np.array_equal(with_id.mask, without.mask)
    outside = with_id.mask == 0
    assert np.array_equal(with_id.image[outside], without.image[outside])  # bit for bit outside the face mask
    inside = with_id.mask > 0
    assert np.abs(with_id.image[inside].astype(int) - without.image[inside]).max() > 1
    assert np.abs(with_id.image[inside].astype(int) - other_id.image[inside]).max() > 0  # another person
    # style strength 100: start_merge_step = every step run -> the identity never enters -> the text-only image
    never = grpc_client.detail(target, detail_params(style_strength=100.0), faces=[photos["astronaut"]])
    assert np.array_equal(never.image, without.image)
    # merging only at the last step changes less than merging after the first
    late = grpc_client.detail(target, detail_params(style_strength=75.0), faces=[photos["astronaut"]])  # merge > 3
    assert np.array_equal(late.image, without.image)
    mid = grpc_client.detail(target, detail_params(style_strength=50.0), faces=[photos["astronaut"]])  # steps 3 only
    diff = lambda a: np.abs(a.image.astype(int) - without.image).sum()  # noqa: E731
    assert 0 < diff(mid) < diff(with_id)


def test_two_identity_photos(grpc_client, photos):
    one = grpc_client.detail(photos["target"], detail_params(), faces=[photos["astronaut"]])
    two = grpc_client.detail(photos["target"], detail_params(), faces=[photos["astronaut"], photos["group"]])
    assert not np.array_equal(one.image, two.image)
    assert np.array_equal(one.image[one.mask == 0], two.image[two.mask == 0])


def test_portrait_stream_with_identity(grpc_client, photos):
    params = Stage1Params(prompt="portrait of a woman img, oil painting", width=64, height=64, steps=2, seed=9)
    detail = DetailParams(prompt=params.prompt, steps=2, work_size=64, seed=9)
    stages = []
    out = grpc_client.portrait(params, detail, lambda stage, step, n: stages.append(stage), faces=[photos["astronaut"]])
    plain = grpc_client.stage1(Stage1Params(prompt="portrait of a woman, oil painting", width=64, height=64, steps=2, seed=9))
    assert "base" in stages
    assert np.array_equal(out.base_image, plain.images[0])  # stage 1 ran on the prompt without the trigger word


def raw_detail(client, target: bytes, faces: list[bytes], **over):
    """face_detailer called with raw arrays: the server's own checks, not the client's."""
    arrays = field_arrays(detail_params(**over), DETAIL_TYPES)
    arrays["image"] = ("BYTES", np.array([target], dtype=object))
    id_images = np.empty(len(faces), dtype=object)
    id_images[:] = faces
    arrays["id_images"] = ("BYTES", id_images)
    return client.infer("face_detailer", arrays, ["image", "faces_found"])


@pytest.mark.parametrize("case, field, message", [
    ("no trigger", "prompt", "needs the trigger word 'img' right after the class word"),
    ("two triggers", "prompt", "must contain the trigger word 'img' once, found it 2 times"),
    ("no face", "id_images", "no face found in photo 2 of identity 1"),
    ("too many", "id_images", "at most 4 identity photos per identity (identity 1), got 5"),
    ("not an image", "id_images", "photo 1 of identity 1 is not a readable image"),
])
def test_bad_identity_input(grpc_client, http_client, photos, case, field, message):
    faces = {"no face": [photos["astronaut"], photos["blank"]], "too many": [photos["astronaut"]] * 5,
             "not an image": [b"not an image"]}.get(case, [photos["astronaut"]])
    prompt = {"no trigger": "photo of a person", "two triggers": "a man img and a woman img"}.get(case, PROMPT)
    for client in (grpc_client, http_client):
        with pytest.raises(InvalidInput, match=re.escape(message)) as error:
            raw_detail(client, photos["target"], faces, prompt=prompt)
        assert error.value.field == field
    # the server keeps serving
    assert raw_detail(grpc_client, photos["target"], [photos["astronaut"]])["faces_found"][0] == 2


def test_portrait_rejects_bad_identity_before_any_diffusion(grpc_client, photos):
    from clients.triton import STAGE1_TYPES

    params = Stage1Params(prompt="portrait of a woman img", width=64, height=64, steps=2)
    arrays = field_arrays(params, STAGE1_TYPES, [n for n in STAGE1_TYPES if n != "batch_size"])
    arrays["id_images"] = ("BYTES", np.array([photos["blank"]], dtype=object))
    steps = []
    with pytest.raises(InvalidInput, match="no face found in photo 1 of identity 1") as error:
        for out in grpc_client.stream("portrait", arrays, ["step", "image"]):
            steps.append(out)
    assert error.value.field == "id_images" and steps == []


def test_cli_generate_with_face(server, tmp_path, photos):
    from portrait.app.cli import main

    face = tmp_path / "face.png"
    face.write_bytes(photos["astronaut"])
    out = tmp_path / "p.png"
    code = main(["generate", "--url", server.grpc_url, "--prompt", "portrait of a woman img, oil painting", "--face",
                 str(face), "--steps", "2", "--width", "64", "--height", "64", "--out", str(out)])
    assert code == 0 and out.exists() and Path(str(out).replace(".png", "_base.png")).exists()
    assert main(["detail", "--url", server.grpc_url, "--image", str(face), "--prompt", "a woman", "--face", str(face),
                 "--out", str(tmp_path / "d.png")]) == 2  # no trigger word: a clear error, exit 2


def test_text_encoder_serves_identity_and_plain_prompts_together(grpc_client):
    """Concurrent requests with and without num_id_images share the dynamically batched text_encoder."""
    from concurrent.futures import ThreadPoolExecutor

    def encode(i: int) -> dict:
        arrays = {"prompt": ("BYTES", np.array([[f"portrait of a woman img, style {i}".encode()]], dtype=object))}
        if i % 2:
            arrays["num_id_images"] = ("INT32", np.array([[1 + i % 3]], np.int32))
        return grpc_client.infer("text_encoder", arrays, ["prompt_embeds", "class_tokens_mask"])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(encode, range(16)))
    for i, out in enumerate(results):
        marked = int(out["class_tokens_mask"].sum())
        assert marked == (2 * (1 + i % 3) if i % 2 else 0), i
        assert np.array_equal(out["prompt_embeds"], encode(i)["prompt_embeds"])  # same alone as in company
