"""What people see of the identity check: the store's record, the CLI's table, the labelled faces, the sweep's
contact sheet sorted by similarity (over a fake client: no server)."""

from __future__ import annotations

import numpy as np
import pytest

from clients.triton import IdentityCheck, PortraitOutput
from portrait.app.cli import identity_table
from portrait.app.production import identity_record, identity_score, label_faces
from portrait.app.store import LocalBackend, ProductionStore
from portrait.app.sweep import parse_sweep, run_sweep
from tests.helpers import png

BOXES = np.array([[10, 10, 40, 40], [60, 12, 90, 44], [100, 50, 120, 70]], np.float32)
CHECK = IdentityCheck(np.array([1, 0, -1], np.int32),
                      np.array([[0.1, 0.8], [0.7, 0.2], [0.05, 0.0]], np.float32),
                      np.array([[0.2, 0.9], [0.85, 0.1], [0.0, 0.1]], np.float32))


def test_the_store_record_keeps_box_identity_and_both_similarities():
    record = identity_record(BOXES, CHECK)
    assert record[0] == {"box": [10.0, 10.0, 40.0, 40.0], "identity": 1, "similarity": [0.1, 0.8],
                         "similarity_before": [0.2, 0.9]}
    assert record[2]["identity"] is None
    assert identity_score({"identity_check": record}) == pytest.approx((0.8 + 0.7) / 2)  # faces with an identity
    assert identity_score({"identity_check": []}) is None and identity_score({}) is None


def test_the_cli_table_says_who_got_whom_and_how_close():
    lines = identity_table(BOXES, CHECK).splitlines()
    assert "before -> after" in lines[0] and len(lines) == 4
    assert lines[1].startswith("  face 1 [10, 10, 40, 40] -> identity 2")
    assert "1: +0.200 -> +0.100   2: +0.900 -> +0.800*" in lines[1]  # * marks its own identity
    assert "-> none" in lines[3]


def test_the_labelled_faces_draw_each_box_in_its_identitys_colour():
    image = np.full((80, 128, 3), 255, np.uint8)
    labelled = np.array(label_faces(image, identity_record(BOXES, CHECK)))
    assert labelled.shape == image.shape
    assert tuple(labelled[25, 10]) == (0x2E, 0xCC, 0x40)  # face 1 (identity 2): its box's left edge
    assert tuple(labelled[28, 60]) == (0xFF, 0x41, 0x36)  # face 2 (identity 1)
    assert tuple(labelled[60, 100]) == (0xAA, 0xAA, 0xAA)  # face 3: no identity, grey
    # no room above the box at the top edge: the label goes under it, on its colour, with dark text
    label = labelled[41:58, 10:40]
    assert (label == (0x2E, 0xCC, 0x40)).all(axis=-1).mean() > 0.5 and (label.max(axis=-1) < 80).any()


class FakeClient:
    """client.portrait answering a flat image and one face whose similarity to its identity depends on the seed."""

    def portrait(self, base, detail, progress=None, cancel=None, identities=None, face_prompts=None):
        image = np.full((16, 16, 3), base.seed * 40, np.uint8)
        score = {0: 0.3, 1: 0.9, 2: 0.6}[base.seed]
        check = IdentityCheck(np.array([0], np.int32), np.array([[score]], np.float32), np.array([[0.5]], np.float32))
        return PortraitOutput(image, image[..., 0], image, BOXES[:1], base.seed, 0, check)


def test_the_sweep_contact_sheet_sorts_each_row_by_similarity(tmp_path):
    (tmp_path / "a.png").write_bytes(png(np.full((32, 32, 3), 90, np.uint8)))
    (tmp_path / "b.png").write_bytes(png(np.full((32, 32, 3), 20, np.uint8)))
    text = ("prompts: ['a person img, studio']\nidentities: [a.png, [b.png]]\nface_prompts: ['a man img', '']\n"
            "params: {steps: 2, width: 64, height: 64}\nseeds: [0, 1, 2]\nsort: similarity\n")
    sweep = parse_sweep(text, tmp_path, 64)
    assert [tuple(p.name for p in g) for g in sweep.identities] == [("a.png",), ("b.png",)] and sweep.sort == "similarity"
    store = ProductionStore(LocalBackend(tmp_path / "store"))
    record = run_sweep(FakeClient(), store, sweep)
    assert record["rows"] == ["a.png + b.png / a person img, studio"]
    sheet = np.array(record["sheet"])
    cells = [sheet[48 + 100, 220 + j * 262 + 100] for j in range(3)]  # the centre of each cell, left to right
    assert [int(c[0]) for c in cells] == [40, 80, 0]  # seeds 1 (0.9), 2 (0.6), 0 (0.3): best match first
    metas = [store.production(pid).meta for pid in record["productions"]]
    assert [m["identity_check"][0]["similarity"] for m in metas] == [[0.3], [0.9], [pytest.approx(0.6)]]
    assert all(len(m["identities"]) == 2 and m["face_prompts"] == ["a man img", ""] for m in metas)


@pytest.mark.parametrize("text,field,message", [
    ("prompts: ['a person img']\nfaces: [a.png]\nidentities: [a.png]\n", "identities", "not both"),
    ("prompts: ['a person img']\nsort: size\n", "sort", "must be one of none, similarity"),
    ("prompts: ['a person img']\nidentities: [a.png, a.png, a.png]\nparams: {max_faces: 2}\n", "max_faces",
     "at least the number of identities (3)"),
    ("prompts: ['a person']\nparams: {assign: match}\n", "assign", "match needs identity photos"),
])
def test_bad_sweeps_with_identities(tmp_path, text, field, message):
    from portrait.errors import InvalidInput

    (tmp_path / "a.png").write_bytes(png(np.full((32, 32, 3), 90, np.uint8)))
    with pytest.raises(InvalidInput) as caught:
        parse_sweep(text, tmp_path, 64)
    assert caught.value.field == field and message in str(caught.value)


def test_the_cli_reads_several_identities_and_their_prompts(tmp_path):
    from portrait.app.cli import build_parser, read_identities
    from portrait.errors import InvalidInput

    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.png").write_bytes(name.encode())
    args = build_parser().parse_args([
        "detail", "--image", "x.png", "--prompt", "two people img", "--identity", f"{tmp_path}/a.png,{tmp_path}/b.png",
        "--identity", f"{tmp_path}/c.png", "--face-prompt", "a man img", "--face-prompt", "", "--assign", "match"])
    people = read_identities(args)
    assert people.photos == ((b"a", b"b"), (b"c",)) and people.face_prompts == ("a man img", "")
    assert args.assign == "match"
    args = build_parser().parse_args(["detail", "--image", "x.png", "--prompt", "p img", "--face", f"{tmp_path}/a.png"])
    assert read_identities(args).photos == ((b"a",),)  # --face: one person, as before
    with pytest.raises(SystemExit):
        build_parser().parse_args(["detail", "--image", "x.png", "--prompt", "p", "--assign", "size"])
    args = build_parser().parse_args(["detail", "--image", "x.png", "--prompt", "p img", "--identity",
                                      f"{tmp_path}/missing.png"])
    with pytest.raises(InvalidInput, match="id_images: cannot be read"):
        read_identities(args)
