"""Sweeps: validated before anything runs; 2 faces x 2 ideas x 2 guidance values -> 8 productions + a labelled sheet."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from portrait.app.store import LocalBackend, ProductionStore
from portrait.app.sweep import MAX_COMBINATIONS, parse_sweep, run_sweep
from portrait.errors import InvalidInput
from tests.helpers import sample_photos


@pytest.fixture(scope="module")
def face_files(tmp_path_factory):
    from portrait.models.faces import HaarFaceDetector

    folder = tmp_path_factory.mktemp("faces")
    astronaut, group = sample_photos()
    x0, y0, x1, y1 = HaarFaceDetector()(group, 8).boxes[0].astype(int)
    pad = (x1 - x0) // 2
    Image.fromarray(astronaut).save(folder / "astronaut.png")
    Image.fromarray(group[max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad]).save(folder / "guest.png")
    return folder


@pytest.mark.parametrize("text, message", [
    ("ideas: [a]\ngrid: {cfg: [1, 2]}", "grid: unknown parameter(s) cfg"),
    ("ideas: [a]\nparams: {steps: 0}", "steps: must be in [1, 150], got 0"),
    ("ideas: [a]\ngrid: {guidance_scale: [5, 40]}", "guidance_scale: must be in [0, 30], got 40"),
    ("ideas: [a]\ngrid: {width: [100]}", "width: must be a multiple of 8"),
    ("ideas: [a, b]\ngrid: {seed_x: [1]}", "grid: unknown parameter(s) seed_x"),
    ("ideas: [a]\nseeds: [" + ", ".join(map(str, range(MAX_COMBINATIONS + 1))) + "]",
     f"sweep: has {MAX_COMBINATIONS + 1} combinations (1 rows x {MAX_COMBINATIONS + 1} columns); at most {MAX_COMBINATIONS}"),
    ("idea: [a]", "sweep: unknown key(s) idea"),
    ("ideas: [a]\nprompts: [b]", "sweep: needs exactly one of ideas or prompts"),
    ("ideas: [a]\nfaces: [missing.png]", "faces: "),
    ("ideas: [a]\nparams: {steps: 3}\ngrid: {steps: [4]}", "grid: steps is both fixed (params) and swept (grid)"),
    ("- a\n- b", "sweep: must be a YAML mapping"),
])
def test_bad_sweeps_are_rejected_before_running(tmp_path, text, message):
    with pytest.raises(InvalidInput) as error:
        parse_sweep(text, tmp_path, 64)
    assert str(error.value).startswith(message), str(error.value)


def test_sweep_of_2_faces_2_ideas_2_guidances(grpc_client, face_files, tmp_path):
    store = ProductionStore(LocalBackend(tmp_path / "store"))
    sweep = parse_sweep(
        "name: study\nfaces: [astronaut.png, guest.png]\nclass_word: person\n"
        "ideas: [corporate confidence, rainy noir]\nparams: {steps: 2, width: 64, height: 64}\n"
        "grid: {guidance_scale: [3.0, 6.0]}\nseeds: [11]\n", face_files, 64)
    seen = []
    record = run_sweep(grpc_client, store, sweep, lambda done, total, what: seen.append((done, total)))
    assert seen == [(i, 8) for i in range(1, 9)]
    productions = store.productions()
    assert len(productions) == 8 == len(record["productions"])
    swept = sorted((p.meta["sweep"]["face"], p.meta["sweep"]["text"], p.meta["sweep"]["swept"]["guidance_scale"])
                   for p in productions)
    assert swept == sorted((f, t, g) for f in ("astronaut.png", "guest.png")
                           for t in ("corporate confidence", "rainy noir") for g in (3.0, 6.0))
    for p in productions:
        assert p.meta["params"]["stage1"]["guidance_scale"] == p.meta["sweep"]["swept"]["guidance_scale"]
        assert " img" in p.meta["prompt"] and len(p.meta["faces"]) == 1 and p.meta["seed"] == 11
    assert record["rows"] == ["astronaut.png / corporate confidence", "astronaut.png / rainy noir",
                              "guest.png / corporate confidence", "guest.png / rainy noir"]
    assert record["columns"] == ["guidance_scale=3, seed=11", "guidance_scale=6, seed=11"]
    sheet = np.array(Image.open(io.BytesIO(store.backend.get(record["contact_sheet"]))))
    assert sheet.shape == (48 + 4 * (256 + 6), 220 + 2 * (256 + 6), 3)
    assert (sheet[:48] < 128).any() and (sheet[48:, :220] < 128).any()  # the column and row labels are drawn
    assert Path(record["contact_sheet"]).parts[0] == "curated"


def test_cli_sweep_validates_first(tmp_path, capsys):
    from portrait.app.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("ideas: [a]\ngrid: {guidance_scale: [1, 99]}\n")
    assert main(["sweep", str(bad)]) == 2
    assert "error: guidance_scale: must be in [0, 30], got 99" in capsys.readouterr().err
