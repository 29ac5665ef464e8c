"""Create: face photos + an idea -> the agent's prompt (editable) -> parameters -> Generate, with live progress
from the gRPC stream, Cancel, then base / mask / final side by side, downloads and Save to gallery."""

from __future__ import annotations

import dataclasses

import streamlit as st

from portrait import params as P
from portrait.diffusion.trigger import TRIGGER_WORD, text_only_prompt
from portrait.errors import Cancelled, InvalidInput, PortraitError
from ui.common import get_client, get_store, native_size, sample_faces, show_error, upright

# the widgets' limits and defaults are the schema's (portrait/params.py), but where noted
BASE, DETAIL = P.field_defaults(P.Stage1Params), P.field_defaults(P.DetailParams)
SEED_UI_MAX = min(P.field_limits(P.Stage1Params, "seed")[1], 2**53 - 1)  # a browser number holds 53 bits exactly
STRENGTH_UI_MIN = 0.05  # not the schema's 0: a strength that runs no step is refused (steps x strength >= 1)

st.title("Create a portrait")

if st.session_state.get("running"):  # the last run did not finish: Cancel (or a page change) interrupted it
    st.session_state.running = False
    st.warning("Generation cancelled: the server stopped the request.")

# identity photos
left, right = st.columns([2, 1])
left.file_uploader("Face photos (the identity, up to 4)", type=["png", "jpg", "jpeg", "webp"],
                   accept_multiple_files=True, key="uploads")
right.selectbox("or a bundled sample face", ["none", *sample_faces()], key="sample_face")
right.selectbox("The person is a", ["person", "woman", "man"], key="class_word")


def current_faces() -> list[bytes]:
    """The identity photos as the widgets hold them now (also inside callbacks, which run before the page)."""
    sample = st.session_state.get("sample_face", "none")
    return ([f.getvalue() for f in st.session_state.get("uploads") or []]
            + ([sample_faces()[sample]] if sample != "none" else []))


def shown_faces(faces: list[bytes]) -> list:
    """The photos as the server will read them (upright); an unreadable one is named by its place."""
    shown = []
    for i, face in enumerate(faces):
        try:
            shown.append(upright(face))
        except InvalidInput as error:
            raise InvalidInput("id_images", f"photo {i + 1} of {len(faces)} {error.message}") from None
    return shown


faces = current_faces()
if faces:
    try:  # decoded, not the raw bytes: Streamlit re-encodes a large photo without its EXIF orientation
        st.image(shown_faces(faces), width=96, caption=[f"identity {i + 1}" for i in range(len(faces))])
    except InvalidInput as error:
        show_error(error)

# idea -> prompt (the agent), editable
st.session_state.setdefault("prompt", "")
st.session_state.setdefault("negative_prompt", "blurry, low quality")


def write_prompt() -> None:
    from portrait.app.production import prompt_from_idea

    try:
        choice = prompt_from_idea(st.session_state.idea, st.session_state.class_word,
                                  with_identity=bool(current_faces()))
    except PortraitError as error:
        st.session_state.prompt_error = str(error)
        return
    st.session_state.prompt_error = None
    st.session_state.prompt, st.session_state.negative_prompt = choice.prompt, choice.negative_prompt
    st.session_state.keywords, st.session_state.idea_used = list(choice.keywords), choice.idea


idea_col, button_col = st.columns([4, 1])
idea_col.text_input("Idea (two words are enough)", key="idea", placeholder="corporate confidence")
button_col.button("Write prompt", on_click=write_prompt, width="stretch")
if st.session_state.get("prompt_error"):
    st.error(st.session_state.prompt_error)
st.text_area("Prompt" + (f" (keep '<class word> {TRIGGER_WORD}' for the identity)" if faces else ""), key="prompt",
             height=90)
st.text_area("Negative prompt", key="negative_prompt", height=68)

# parameters, with the server's limits
with st.expander("Parameters", expanded=True):
    c = st.columns(4)
    steps = c[0].number_input("Steps", *P.field_limits(P.Stage1Params, "steps"), BASE["steps"], key="steps")
    guidance = c[1].number_input("Guidance", *P.field_limits(P.Stage1Params, "guidance_scale"), BASE["guidance_scale"],
                                 step=0.5, key="guidance")
    style = c[2].number_input("Identity style strength %", *P.field_limits(P.DetailParams, "style_strength"),
                              DETAIL["style_strength"], step=5.0, key="style_strength",
                              help="steps run on the text alone before the identity merges in")
    strength = c[3].number_input("Stage-2 strength", STRENGTH_UI_MIN, P.field_limits(P.DetailParams, "strength")[1],
                                 DETAIL["strength"], step=0.05, key="strength", help="how far the face is re-noised")
    c = st.columns(4)
    seed = c[0].number_input("Seed", P.field_limits(P.Stage1Params, "seed")[0], SEED_UI_MAX, BASE["seed"], key="seed")
    # the size's default is the checkpoint's native size (as the server's), not the schema's 1024
    width = c[1].number_input("Width", *P.field_limits(P.Stage1Params, "width"), native_size(), step=P.SIZE_MULTIPLE,
                              key="width")
    height = c[2].number_input("Height", *P.field_limits(P.Stage1Params, "height"), native_size(), step=P.SIZE_MULTIPLE,
                               key="height")
    # one portrait request per image (the portrait model makes one), as many as a batch may hold
    count = c[3].number_input("Images", *P.field_limits(P.Stage1Params, "batch_size"), BASE["batch_size"], key="count")


def checked_params() -> tuple[P.Stage1Params, P.DetailParams, int]:
    """The same checks the server runs; an InvalidInput names the field and its limit."""
    prompt = st.session_state.prompt
    base = P.Stage1Params(prompt=prompt, negative_prompt=st.session_state.negative_prompt, width=int(width),
                          height=int(height), steps=int(steps), guidance_scale=float(guidance), seed=int(seed))
    detail = P.detail_params_for(base, strength=float(strength), style_strength=float(style), work_size=native_size())
    P.check_int_range("images", int(count), *P.field_limits(P.Stage1Params, "batch_size"))
    if faces:
        P.check_id_images(len(faces))
        text_only_prompt(prompt)
        shown_faces(faces)
    return base, detail, int(count)


if st.button("Generate", type="primary"):
    try:
        base, detail, count = checked_params()
    except InvalidInput as error:
        show_error(error)
        st.stop()
    from portrait.app.production import PromptChoice, produce

    choice = PromptChoice(base.prompt, base.negative_prompt, st.session_state.get("idea_used"),
                          tuple(st.session_state.get("keywords", ())))
    st.session_state.running = True
    cancel_slot = st.empty()  # a click reruns the page, which interrupts this run: the stream closes, the server stops
    cancel_slot.button("Cancel", help="stops the request on the server within one denoising step")
    overall = st.progress(0.0, text=f"image 1 of {count}")
    stage_bar = st.progress(0.0, text="starting ...")
    produced = []
    try:
        for i in range(count):
            def progress(stage: str, step: int, total: int, i=i) -> None:
                stage_bar.progress(step / total, text=f"{stage}: step {step} of {total}")
                overall.progress((i + (0.5 if stage == "detail" else 0.0) + 0.5 * step / total) / count,
                                 text=f"image {i + 1} of {count}")

            production, _ = produce(get_client(), get_store(), choice, dataclasses.replace(base, seed=base.seed + i),
                                    detail, faces or None, progress)
            produced.append(production.id)
        overall.progress(1.0, text=f"{count} image(s) done")
        st.session_state.results = produced
    except Cancelled:
        st.warning("Generation cancelled.")
    except Exception as error:  # a plain message, never a traceback
        show_error(error)
    finally:
        st.session_state.running = False
        cancel_slot.empty()

# results: base | mask | final, with downloads and Save to gallery
store = get_store()
for pid in st.session_state.get("results", []):
    try:
        production = store.production(pid)
    except PortraitError as error:
        show_error(error)
        continue
    st.subheader(f"seed {production.meta.get('seed')}  ·  {production.meta.get('timings', {}).get('total_s', '?')} s")
    columns = st.columns(3)
    for column, (name, title) in zip(columns, (("base", "Base (stage 1)"), ("mask", "Mask"), ("image", "Final"))):
        data = store.image(pid, name)
        column.image(data, caption=title, width="stretch")
        column.download_button(f"Download {name}", data, file_name=f"{pid}_{name}.png", mime="image/png",
                               key=f"download-{pid}-{name}")
    if st.button("Save to gallery", key=f"save-{pid}"):
        store.promote(pid)
        st.success("Saved to the gallery.")
    faces_detailed = production.meta.get("faces_detailed", 0)
    st.caption(f"{faces_detailed} face(s) detailed" if faces_detailed else "no face found in the base image: "
               "the final image is the base image")
