"""Parameter sweeps: faces x ideas x a parameter grid x seeds, validated whole before anything runs.

    name: lighting-study                # optional; the curated/ folder of the contact sheet
    faces: [me.jpg, sister.png]         # identity photos (optional; paths relative to the YAML file), a row each
    # or, several people in every image (one face each, by `assign`): identities, each one photo or a list
    # identities: [[me.jpg, me2.jpg], sister.png]
    # face_prompts: ["a man img, smiling", ""]   # with identities: one per identity ("" = the prompt)
    class_word: person                  # with faces: the word before the trigger (woman, man, person ...)
    ideas: ["corporate confidence", "rainy noir"]   # or prompts: ["portrait of a person img, ..."]
    params: {steps: 12, width: 768, height: 1024}   # fixed values
    grid: {guidance_scale: [3.0, 6.0], style_strength: [15, 40]}   # swept values: every combination
    seeds: [0, 1]
    sort: similarity                    # optional: each row of the contact sheet best identity match first

Every combination is one production in the store (its swept values in the metadata); at the end a
contact sheet (rows: face x idea; columns: grid values x seed, labelled) goes to curated/<name>/. With
`sort: similarity` each row's cells are ordered by the mean ArcFace similarity of the faces to their identities
(production.identity_score), shown in the labels.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from portrait.errors import InvalidInput
from portrait.images import decode_image, encode_png
from portrait.params import MODELS, DetailParams, FaceIdentities, SamplingParams, Stage1Params, detail_params_for

if TYPE_CHECKING:
    from PIL import Image

MAX_COMBINATIONS = 256
# Every production is one `portrait` request: its parameters are that model's (portrait/params.py), but the prompt and
# the seed, which are the sweep's rows and columns. Listed as a sweep reads: the image size first, then sampling, the
# negative prompt, stage 2's own fields, and the `detail` switch.
SWEEP_SETS = ("prompt", "seed")
STAGE1_FIELDS = tuple(sorted((n for n in MODELS["portrait"].fields_of(Stage1Params) if n not in SWEEP_SETS),
                             key=lambda n: (n in SamplingParams.__dataclass_fields__, MODELS["portrait"].types[n] == "BYTES")))
DETAIL_FIELDS = tuple(n for n in MODELS["portrait"].fields if n not in STAGE1_FIELDS and n not in SWEEP_SETS)
PARAMETERS = STAGE1_FIELDS + DETAIL_FIELDS + ("detail",)  # `detail`: the portrait model's switch (false: stage 1 only)
TOP_LEVEL = ("name", "faces", "identities", "face_prompts", "class_word", "ideas", "prompts", "params", "grid", "seeds",
             "sort")
SORTS = ("none", "similarity")


@dataclass(frozen=True)
class Sweep:
    name: str
    faces: tuple[Path, ...]  # each face is a row of its own (one identity photo per production)
    class_word: str
    texts: tuple[str, ...]  # ideas or prompts
    texts_are_ideas: bool
    params: dict
    grid: dict  # name -> list of values (insertion order = column label order)
    seeds: tuple[int, ...]
    identities: tuple[tuple[Path, ...], ...] = ()  # several people in every production (instead of faces)
    face_prompts: tuple[str, ...] = ()
    sort: str = "none"

    @property
    def grid_points(self) -> list[dict]:
        names = list(self.grid)
        return [dict(zip(names, values)) for values in itertools.product(*(self.grid[n] for n in names))]

    @property
    def rows(self) -> list[tuple[Path | tuple | None, str]]:
        """(who, text): who is a face (one identity), the whole cast of `identities`, or None."""
        return list(itertools.product(self.faces or ((self.identities,) if self.identities else (None,)), self.texts))

    @property
    def columns(self) -> list[tuple[dict, int]]:
        return list(itertools.product(self.grid_points, self.seeds))

    @property
    def size(self) -> int:
        return len(self.rows) * len(self.columns)

    def stage_params(self, point: dict, seed: int, prompt: str) -> tuple[Stage1Params, DetailParams | None]:
        values = {**self.params, **point}
        detail = values.pop("detail", True)
        base = Stage1Params(prompt=prompt, seed=seed, **{k: v for k, v in values.items() if k in STAGE1_FIELDS})
        if not detail:
            return base, None
        work = {"work_size": base.width} if "work_size" not in values else {}  # the crop at the image's size
        return base, detail_params_for(base, **work, **{k: v for k, v in values.items() if k in DETAIL_FIELDS})


def label(point: dict, seed: int) -> str:
    return ", ".join([f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items()] + [f"seed={seed}"])


def parse_sweep(text: str, base_dir: Path = Path("."), default_size: int = 1024) -> Sweep:
    """Read and fully validate a sweep (every combination's parameters are checked here, before any request)."""
    import yaml

    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InvalidInput("sweep", f"is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise InvalidInput("sweep", "must be a YAML mapping with ideas (or prompts), params, grid, seeds")
    unknown = sorted(set(spec) - set(TOP_LEVEL))
    if unknown:
        raise InvalidInput("sweep", f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(TOP_LEVEL)}")
    if ("ideas" in spec) == ("prompts" in spec):
        raise InvalidInput("sweep", "needs exactly one of ideas or prompts")
    texts_are_ideas = "ideas" in spec
    texts = spec["ideas" if texts_are_ideas else "prompts"]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise InvalidInput("ideas" if texts_are_ideas else "prompts", "must be a non-empty list of texts")
    faces = spec.get("faces") or []
    if not isinstance(faces, list):
        raise InvalidInput("faces", "must be a list of image paths")
    face_paths = tuple((base_dir / str(f)).expanduser() for f in faces)
    people = spec.get("identities") or []
    if not isinstance(people, list):
        raise InvalidInput("identities", "must be a list of identities, each an image path or a list of them")
    if people and face_paths:
        raise InvalidInput("identities", "give faces (a row per person) or identities (all in every image), not both")
    identities = tuple(tuple((base_dir / str(f)).expanduser() for f in (p if isinstance(p, list) else [p]))
                       for p in people)
    for field, path in [("faces", p) for p in face_paths] + [("identities", p) for g in identities for p in g]:
        if not path.is_file():
            raise InvalidInput(field, f"{path} does not exist")
        try:  # decoded as the server will (orientation applied), so an unreadable photo stops the sweep now
            decode_image(path.read_bytes(), field)
        except InvalidInput as error:
            raise InvalidInput(field, f"{path} {error.message}") from None
        except OSError as error:
            raise InvalidInput(field, f"{path} cannot be read: {error.strerror}") from None
    face_prompts = spec.get("face_prompts") or []
    if not isinstance(face_prompts, list) or not all(isinstance(p, str) for p in face_prompts):
        raise InvalidInput("face_prompts", "must be a list of texts")
    sort = str(spec.get("sort") or "none")
    if sort not in SORTS:
        raise InvalidInput("sort", f"must be one of {', '.join(SORTS)}, got {sort!r}")
    params, grid = spec.get("params") or {}, spec.get("grid") or {}
    for section, values in (("params", params), ("grid", grid)):
        if not isinstance(values, dict):
            raise InvalidInput(section, "must be a mapping of parameter names")
        bad = sorted(set(values) - set(PARAMETERS))
        if bad:
            raise InvalidInput(section, f"unknown parameter(s) {', '.join(bad)}; allowed: {', '.join(PARAMETERS)}")
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise InvalidInput("grid", f"{name} must be a non-empty list of values")
    both = sorted(set(params) & set(grid))
    if both:
        raise InvalidInput("grid", f"{', '.join(both)} is both fixed (params) and swept (grid)")
    seeds = spec.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise InvalidInput("seeds", "must be a non-empty list of integers")
    params = {"width": default_size, "height": default_size, **params}
    sweep = Sweep(str(spec.get("name") or "sweep"), face_paths, str(spec.get("class_word") or "person"), tuple(texts),
                  texts_are_ideas, params, grid, tuple(seeds), identities, tuple(face_prompts), sort)
    # checked as they will be sent: the cast of every row (a face is one identity)
    cast = FaceIdentities(tuple(tuple(b"" for _ in g) for g in identities) or (((b"",),) if face_paths else ()),
                          tuple(face_prompts))
    if sweep.size > MAX_COMBINATIONS:
        raise InvalidInput("sweep", f"has {sweep.size} combinations ({len(sweep.rows)} rows x {len(sweep.columns)} "
                                    f"columns); at most {MAX_COMBINATIONS}")
    for point, seed in sweep.columns:  # every value checked against the server's limits now
        probe = "a person img" if face_paths or identities else "probe"
        _, detail = sweep.stage_params(point, seed, probe)
        if detail is not None:
            cast.check_with(detail.max_faces, detail.assign, probe)
        elif identities:
            raise InvalidInput("identities", "need stage 2 (detail): identity is injected there")
    return sweep


def who_name(who) -> str:
    if who is None:
        return "no face"
    if isinstance(who, Path):
        return who.name
    return " + ".join("/".join(p.name for p in group) for group in who)


def contact_sheet(cells: list[list[np.ndarray]], row_labels: list[str], column_labels: list[str],
                  cell_labels: list[list[str]] | None = None, cell: int = 256) -> Image.Image:
    """A labelled grid: row labels on the left, column labels on top, each image scaled to `cell` px; with
    `cell_labels` (when cells are sorted, so a column is no longer one setting) each cell's label under it."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=14)
    left, top, pad = 220, 48, 6
    under = 40 if cell_labels else 0
    height = cell + pad + under
    sheet = Image.new("RGB", (left + len(column_labels) * (cell + pad), top + len(row_labels) * height), "white")
    draw = ImageDraw.Draw(sheet)
    for j, text in enumerate(column_labels):
        draw.multiline_text((left + j * (cell + pad), 6), wrap(text, 30), fill="black", font=font)
    for i, text in enumerate(row_labels):
        draw.multiline_text((6, top + i * height + cell // 3), wrap(text, 26), fill="black", font=font)
        for j, image in enumerate(cells[i]):
            x, y = left + j * (cell + pad), top + i * height
            sheet.paste(Image.fromarray(image).resize((cell, cell)), (x, y))
            if cell_labels:
                draw.multiline_text((x, y + cell + 2), cell_labels[i][j], fill="black", font=font)
    return sheet


def wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:3])


def run_sweep(client, store, sweep: Sweep, progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Every combination through `produce`, stored; then the contact sheet. Returns the sweep record."""

    from portrait.app.production import PromptChoice, identity_score, produce, prompt_from_idea
    from portrait.app.store import new_id

    sweep_id = f"{sweep.name}-{new_id()}"
    choices = {}
    for face, text in sweep.rows:  # prompts first: an agent failure stops the sweep before any image
        key = (face is not None, text)
        if key not in choices:
            choices[key] = (prompt_from_idea(text, sweep.class_word, face is not None) if sweep.texts_are_ideas
                            else PromptChoice(text))
    total, done = sweep.size, 0
    cells, productions, column_labels = [], [], []
    for face, text in sweep.rows:
        row = []
        choice = choices[(face is not None, text)]
        people = ([[face.read_bytes()]] if isinstance(face, Path)
                  else [[p.read_bytes() for p in group] for group in face] if face else None)
        for point, seed in sweep.columns:
            base, detail = sweep.stage_params(point, seed, choice.prompt)
            production, out = produce(client, store, choice, base, detail, identities=people,
                                      face_prompts=list(sweep.face_prompts) or None,
                                      extra={"sweep": {"id": sweep_id, "face": who_name(face) if face else None,
                                                       "text": text, "swept": point, "seed": seed}})
            row.append((out.image, label(point, seed), identity_score(production.meta)))
            productions.append(production.id)
            done += 1
            if progress is not None:
                progress(done, total, f"{who_name(face) if face else '-'} / {text} / {label(point, seed)}")
        if sweep.sort == "similarity":  # best match first; productions without a face with an identity last
            row.sort(key=lambda cell: -cell[2] if cell[2] is not None else float("inf"))
        cells.append(row)
    row_labels = [f"{who_name(face)} / {text}" for face, text in sweep.rows]
    scored = sweep.sort == "similarity"
    column_labels = [label(point, seed) for point, seed in sweep.columns]
    sheet = contact_sheet([[image for image, _, _ in row] for row in cells], row_labels,
                          ["by identity similarity" if scored else text for text in column_labels],
                          [[f"{text}\nsimilarity {score:.2f}" if score is not None else f"{text}\nno identity"
                            for _, text, score in row] for row in cells] if scored else None)
    record = {"id": sweep_id, "rows": row_labels, "columns": column_labels, "productions": productions,
              "params": sweep.params, "grid": sweep.grid, "seeds": list(sweep.seeds)}
    keys = store.save_curated(sweep_id, {"contact_sheet.png": encode_png(sheet),
                                         "sweep.json": json.dumps(record, indent=2, default=str).encode()})
    return {**record, "contact_sheet": keys[0], "sheet": sheet}
