"""Several identities in one request (params.FaceIdentities): the one wire encoding and every error, naming the field
and the limit, before anything runs."""

from __future__ import annotations

import numpy as np
import pytest

from portrait.errors import InvalidInput
from portrait.params import MAX_IDENTITIES, DetailParams, FaceIdentities

PROMPT = "two founders, a woman img"


def photos(*names: str) -> np.ndarray:
    array = np.empty(len(names), dtype=object)
    array[:] = [n.encode() for n in names]
    return array


def texts(*values: str) -> np.ndarray:
    return photos(*values)


def test_one_identity_without_id_groups_is_todays_request():
    people = FaceIdentities.from_arrays(photos("a", "b"), None, None)
    assert people.photos == ((b"a", b"b"),) and people.count == 1 and people.face_prompts == ()


def test_photos_are_grouped_by_id_groups_and_round_trip():
    people = FaceIdentities.from_arrays(photos("a", "b", "c", "d"), np.array([1, 0, 2, 1], np.int32),
                                        texts("a man img", "", "a child img"))
    assert people.photos == ((b"b",), (b"a", b"d"), (b"c",))
    assert people.prompt_of(0, PROMPT) == "a man img" and people.prompt_of(1, PROMPT) == PROMPT
    wire = people.to_arrays()
    assert wire["id_groups"] == ("INT32", [0, 1, 1, 2]) and wire["id_images"][1] == [b"b", b"a", b"d", b"c"]
    again = FaceIdentities.from_arrays(photos(*(p.decode() for p in wire["id_images"][1])), np.array(wire["id_groups"][1]),
                                       texts(*(p.decode() for p in wire["face_prompts"][1])))
    assert again == people


@pytest.mark.parametrize("arrays,field,message", [
    ((photos("a", "b"), np.array([0, 2]), None), "id_images", "identity 2 has no photo"),
    ((photos("a", "b"), np.array([0]), None), "id_groups", "one identity index per photo in id_images (2), got 1"),
    ((photos("a"), np.array([-1]), None), "id_groups", f"must be in [0, {MAX_IDENTITIES - 1}], got -1"),
    ((photos("a"), np.array([MAX_IDENTITIES]), None), "id_groups", f"got {MAX_IDENTITIES}"),
    ((None, np.array([0]), None), "id_groups", "needs id_images"),
    ((photos(), None, None), "id_images", "is empty"),
    ((photos(*"abcde"), None, None), "id_images", "at most 4 identity photos per identity (identity 1), got 5"),
    ((photos("a", "b"), np.array([0, 1]), texts("a man img")), "face_prompts", "one prompt per identity (2), got 1"),
    ((photos("a", "b"), np.array([0, 1]), texts("a man img", "a woman")), "face_prompts",
     "prompt 2 (identity 2): needs the trigger word 'img'"),
    ((None, None, texts()), "face_prompts", "is empty"),
])
def test_bad_identities_name_the_field_and_the_limit(arrays, field, message):
    with pytest.raises(InvalidInput) as caught:
        FaceIdentities.from_arrays(*arrays)
    assert caught.value.field == field and message in str(caught.value)


@pytest.mark.parametrize("people,params,field,message", [
    (FaceIdentities(((b"a",), (b"b",), (b"c",))), dict(max_faces=2), "max_faces",
     "must be at least the number of identities (3), got 2"),
    (FaceIdentities((), ("a", "b", "c")), dict(max_faces=2), "face_prompts", "at most max_faces (2) prompts, got 3"),
    (FaceIdentities(), dict(assign="match"), "assign", "match needs identity photos"),
    (FaceIdentities(((b"a",),)), dict(prompt="two founders"), "prompt", "needs the trigger word"),
])
def test_identities_are_checked_against_stage2(people, params, field, message):
    detail = DetailParams(**{"prompt": PROMPT, **params})
    with pytest.raises(InvalidInput) as caught:
        people.check_with(detail.max_faces, detail.assign, detail.prompt)
    assert caught.value.field == field and message in str(caught.value)


def test_more_than_the_limit_of_identities():
    with pytest.raises(InvalidInput, match=f"id_groups: at most {MAX_IDENTITIES} identities, got 5"):
        FaceIdentities(tuple((bytes([i]),) for i in range(5)))


def test_assign_is_a_choice_of_the_schema():
    assert DetailParams(prompt="x").assign == "order"
    with pytest.raises(InvalidInput, match="assign: must be one of order, match, got 'size'"):
        DetailParams(prompt="x", assign="size")
