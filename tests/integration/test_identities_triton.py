"""Several identities in one request through the real server: each face its own person (order or match), the
identity check on every output (from the returned pixels), and every bad request naming its field."""

from __future__ import annotations

import re

import numpy as np
import pytest

from clients.triton import DETAIL_TYPES, field_arrays
from portrait.errors import InvalidInput
from portrait.params import DetailParams, Stage1Params
from tests.helpers import TOLERANCE, max_diff, package_file, png

PROMPT = "photo of a person img, detailed skin"


def params(**over) -> DetailParams:
    return DetailParams(**{**dict(prompt=PROMPT, steps=4, strength=1.0, max_faces=3, work_size=64, seed=3), **over})


def detect(client, image: np.ndarray, max_faces: int) -> dict[str, np.ndarray]:
    return client.infer("face_detector", {"image": ("UINT8", image), "max_faces": ("INT32", np.array([max_faces], np.int32))},
                        ["boxes", "keypoints"])


def embed(client, image: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    out = client.infer("face_embedder", {"image": ("UINT8", image), "keypoints": ("FP32", keypoints.astype(np.float32))},
                       ["embeddings"])["embeddings"]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def group(grpc_client):
    """insightface's group photo, its three largest faces (as the server finds them), and a crop around each of the
    two largest: the identity photos of two people who are also in the photo."""
    photo = package_file("insightface", "data/images/t1.jpg")
    faces = detect(grpc_client, photo, 3)
    assert len(faces["boxes"]) == 3, faces["boxes"]
    crops = []
    for x0, y0, x1, y1 in faces["boxes"][:2].astype(int):
        pad = (x1 - x0) // 2
        crops.append(png(photo[max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad]))
    return {"photo": photo, "boxes": faces["boxes"], "keypoints": faces["keypoints"], "crops": crops}


def which_face(boxes: np.ndarray, box: np.ndarray) -> int:
    """The index in `boxes` of the box that is `box` (the detector answers the same on the same pixels)."""
    return int(np.argmin(np.abs(boxes - box).sum(axis=1)))


def test_match_gives_each_person_their_own_identity(grpc_client, group):
    # identity 0 is the second-largest face, identity 1 the largest: order would give them the wrong faces
    people = [[group["crops"][1]], [group["crops"][0]]]
    out = grpc_client.detail(png(group["photo"]), params(assign="match"), identities=people)
    assert out.faces_found == 3
    given = {which_face(group["boxes"], box): int(k) for box, k in zip(out.boxes, out.identity.face_identity)}
    assert given == {0: 1, 1: 0, 2: -1}  # each person their own; the third face (nobody's) keeps the text prompt
    before = out.identity.similarity_before
    assert before.shape == out.identity.similarity.shape == (3, 2)
    for f, k in enumerate(out.identity.face_identity):
        if k >= 0:  # before detailing each face is most like its own identity photo
            assert before[f, k] > before[f, 1 - k] + 0.2, before
    by_order = grpc_client.detail(png(group["photo"]), params(assign="order"), identities=people)
    assert {which_face(group["boxes"], b): int(k) for b, k in zip(by_order.boxes, by_order.identity.face_identity)} \
        == {0: 0, 1: 1, 2: -1}  # order: largest face first, whoever it is


def test_the_similarity_is_the_returned_pixels_embedded(grpc_client, group):
    """Recomputed from outside through the served face_embedder: the detailed faces of the returned image at the
    detected keypoints against each identity photo's face, and the same for the input."""
    people = [[group["crops"][0]], [group["crops"][1]]]
    out = grpc_client.detail(png(group["photo"]), params(), identities=people)
    references = []
    for (crop,) in people:
        from portrait.images import decode_image

        pixels = decode_image(crop)
        references.append(embed(grpc_client, pixels, detect(grpc_client, pixels, 1)["keypoints"][:1])[0])
    references = np.stack(references)
    rows = [which_face(group["boxes"], box) for box in out.boxes]
    keypoints = group["keypoints"][rows]
    np.testing.assert_allclose(out.identity.similarity, embed(grpc_client, out.image, keypoints) @ references.T,
                               atol=1e-4)
    np.testing.assert_allclose(out.identity.similarity_before,
                               embed(grpc_client, group["photo"], keypoints) @ references.T, atol=1e-4)
    assert np.abs(out.identity.similarity - out.identity.similarity_before).max() > 1e-3  # the faces changed


def test_a_face_gets_its_own_identity_whoever_else_is_in_the_request(grpc_client, group):
    """Face 1 (largest) with identities [A, B] is face 1 with [A] alone: B's row does not leak into A's face."""
    both = grpc_client.detail(png(group["photo"]), params(max_faces=2), identities=[[group["crops"][0]], [group["crops"][1]]])
    alone = grpc_client.detail(png(group["photo"]), params(max_faces=2), identities=[[group["crops"][0]]])
    assert both.identity.face_identity.tolist() == [0, 1] and alone.identity.face_identity.tolist() == [0, -1]
    first, second = (tuple(slice(int(a), int(b)) for a, b in ((y0, y1), (x0, x1))) for x0, y0, x1, y1 in both.boxes)
    change = lambda face: np.abs(both.image[face].astype(int) - alone.image[face]).mean()  # noqa: E731
    assert max_diff(both.image[first], alone.image[first]) <= TOLERANCE
    assert change(second) > max(change(first), 0.0)  # identity B vs the text-only prompt: only the second face moved


def raw_detail(client, photos: list[bytes], groups: list[int] | None = None, prompts: list[str] | None = None, **over):
    """face_detailer with raw arrays: the server's own checks, not the client's."""
    arrays = field_arrays(params(**over), DETAIL_TYPES)
    arrays["image"] = ("BYTES", np.array([png(package_file("insightface", "data/images/t1.jpg"))], dtype=object))
    for name, values, datatype in (("id_images", photos, "BYTES"), ("id_groups", groups, "INT32"),
                                   ("face_prompts", prompts and [p.encode() for p in prompts], "BYTES")):
        if values is not None:
            array = np.empty(len(values), dtype=object) if datatype == "BYTES" else np.array(values, np.int32)
            if datatype == "BYTES":
                array[:] = values
            arrays[name] = (datatype, array)
    return client.infer("face_detailer", arrays, ["faces_found", "face_identity"])


@pytest.mark.parametrize("case, field, message", [
    ("no face", "id_images", "no face found in photo 2 of identity 2"),
    ("empty group", "id_images", "identity 2 has no photo"),
    ("more than max_faces", "max_faces", "must be at least the number of identities (3), got 2"),
    ("prompt without trigger", "face_prompts", "prompt 2 (identity 2): needs the trigger word 'img'"),
    ("groups do not fit", "id_groups", "one identity index per photo in id_images (2), got 3"),
    ("match without identities", "assign", "match needs identity photos"),
])
def test_bad_identities_name_the_field_and_the_limit(grpc_client, http_client, group, case, field, message):
    a, b = group["crops"]
    blank = png(np.full((96, 96, 3), 128, np.uint8))
    request = {
        "no face": dict(photos=[a, b, blank], groups=[0, 1, 1]),
        "empty group": dict(photos=[a, b], groups=[0, 2]),
        "more than max_faces": dict(photos=[a, b, a], groups=[0, 1, 2], max_faces=2),
        "prompt without trigger": dict(photos=[a, b], groups=[0, 1], prompts=["a man img", "a woman"]),
        "groups do not fit": dict(photos=[a, b], groups=[0, 1, 1]),
        "match without identities": dict(photos=None, assign="match"),
    }[case]
    for client in (grpc_client, http_client):
        with pytest.raises(InvalidInput, match=re.escape(message)) as error:
            raw_detail(client, **request)
        assert error.value.field == field
    assert raw_detail(grpc_client, [a, b], [0, 1])["face_identity"].tolist() == [0, 1, -1]  # still serving


def test_portrait_stream_returns_the_identity_check_of_its_stage_2(grpc_client, group):
    """The portrait model passes identities and face prompts to stage 2 as face_detailer takes them."""
    base = Stage1Params(prompt="portrait of two people img, studio", width=128, height=128, steps=2, seed=721)
    detail = DetailParams(prompt=base.prompt, steps=2, work_size=64, seed=721, assign="match")
    people, prompts = [[group["crops"][0]], [group["crops"][1]]], ["a man img, smiling", ""]
    out = grpc_client.portrait(base, detail, identities=people, face_prompts=prompts)
    faces = len(out.boxes)
    assert out.identity.similarity.shape == out.identity.similarity_before.shape == (faces, 2)
    alone = grpc_client.detail(png(out.base_image), detail, identities=people, face_prompts=prompts)
    assert np.array_equal(alone.boxes, out.boxes)
    assert np.array_equal(alone.identity.face_identity, out.identity.face_identity)
    np.testing.assert_allclose(alone.identity.similarity, out.identity.similarity, atol=1e-3)


def test_every_assigned_face_is_observed_in_the_similarity_histogram(server, grpc_client, group):
    from tests.helpers import metric_total

    names = ("portrait_identity_similarity_count", "portrait_identity_similarity_sum")
    before = [metric_total(server, (n,), ("face_detailer",)) for n in names]
    out = grpc_client.detail(png(group["photo"]), params(), identities=[[group["crops"][0]], [group["crops"][1]]])
    own = [out.identity.similarity[f, k] for f, k in enumerate(out.identity.face_identity) if k >= 0]
    after = [metric_total(server, (n,), ("face_detailer",)) for n in names]
    assert after[0] - before[0] == len(own) == 2
    assert after[1] - before[1] == pytest.approx(sum(own), abs=1e-4)
