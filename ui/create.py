"""Create: face photos + an idea -> the agent's prompt (editable) -> parameters -> Generate, with live progress
from the gRPC stream, Cancel, then base / mask / final side by side, downloads and Save to gallery.
Up to 4 people (each their photos and an optional prompt, one face each, by order or match); or a photo of one's
own to detail. Each face's box is shown labelled with the identity it got and its similarity."""

from __future__ import annotations

import dataclasses

import streamlit as st

from portrait import params as P
from portrait.diffusion.trigger import TRIGGER_WORD
from portrait.errors import Cancelled, InvalidInput, PortraitError
from ui.common import get_client, get_store, native_size, sample_faces, show_error, upright

# the widgets' limits and defaults are the schema's (portrait/params.py), but where noted
BASE, DETAIL = P.field_defaults(P.Stage1Params), P.field_defaults(P.DetailParams)
SEED_UI_MAX = min(P.field_limits(P.Stage1Params, "seed")[1], 2**53 - 1)  # a browser number holds 53 bits exactly
STRENGTH_UI_MIN = 0.05  # not the schema's 0: a strength that runs no step is refused (steps x strength >= 1)
NO_FACE = "Stage 2 found no face in the base image, so nothing was detailed: the final image is the base image."

st.title("Create a portrait")

if reused := st.session_state.pop("reuse_settings", None):  # "Use these settings" on an opened production: set
    st.session_state.update(reused["values"])  # before the widgets are made (widget state does not cross pages)
    st.info(f"The prompt and parameters of production {reused['id']} are filled in below.")

if st.session_state.get("running"):  # the last run did not finish: Cancel (or a page change) interrupted it
    st.session_state.running = False
    st.warning("Generation cancelled: the server stopped the request.")

# who is in the picture: up to MAX_IDENTITIES people, each their photos and an optional prompt; one face each
IMAGE_TYPES = ["png", "jpg", "jpeg", "webp"]
source = st.radio("Start from", ["a prompt", "a photo of mine (detail its faces)"], horizontal=True, key="source")
if source != "a prompt":
    st.file_uploader("Photo whose faces to detail", type=IMAGE_TYPES, key="photo")
people_count = int(st.number_input("People (identities: each gets one face)", 1, P.MAX_IDENTITIES, 1, key="people"))
for k in range(people_count):
    left, right = st.columns([2, 1])
    left.file_uploader(f"Person {k + 1}: face photos (up to {P.MAX_ID_IMAGES})", type=IMAGE_TYPES,
                       accept_multiple_files=True, key="uploads" if k == 0 else f"uploads_{k}")
    if k == 0:
        right.selectbox("or a bundled sample face", ["none", *sample_faces()], key="sample_face")
    right.text_input(f"Person {k + 1}'s prompt (optional)", key=f"face_prompt_{k}",
                     placeholder=f"a man {TRIGGER_WORD}, smiling")
left, right = st.columns([1, 2])
left.selectbox("The person is a", ["person", "woman", "man"], key="class_word")
right.radio("Faces get identities by", P.ASSIGNMENTS, horizontal=True, key="assign",
            help="order: person 1 to the largest face, then left to right, top to bottom; match: each person to the "
                 "face most like their photos (ArcFace)")


def current_people() -> list[list[bytes]]:
    """Each person's photos as the widgets hold them now (also inside callbacks, which run before the page); no
    photo at all: no identity."""
    sample = st.session_state.get("sample_face", "none")
    groups = [[f.getvalue() for f in st.session_state.get("uploads" if k == 0 else f"uploads_{k}") or []]
              for k in range(int(st.session_state.get("people", 1)))]
    if sample != "none":
        groups[0].append(sample_faces()[sample])
    return groups if any(groups) else []


def current_faces() -> list[bytes]:
    return [photo for group in current_people() for photo in group]


def current_face_prompts() -> list[str]:
    prompts = [st.session_state.get(f"face_prompt_{k}", "") or "" for k in range(int(st.session_state.get("people", 1)))]
    return prompts if any(prompts) else []


def shown_faces(people: list[list[bytes]]) -> tuple[list, list[str]]:
    """The photos as the server will read them (upright), with captions; an unreadable one is named by its place."""
    shown, captions = [], []
    for k, group in enumerate(people):
        for i, face in enumerate(group):
            try:
                shown.append(upright(face))
            except InvalidInput as error:
                raise InvalidInput("id_images", f"photo {i + 1} of identity {k + 1} {error.message}") from None
            captions.append(f"person {k + 1}, photo {i + 1}")
    return shown, captions


people = current_people()
if people:
    try:  # decoded, not the raw bytes: Streamlit re-encodes a large photo without its EXIF orientation
        thumbnails, captions = shown_faces(people)
        st.image(thumbnails, width=96, caption=captions)
    except InvalidInput as error:
        show_error(error)
faces = current_faces()

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


def checked_params() -> tuple[P.Stage1Params, P.DetailParams, int, P.FaceIdentities]:
    """The same checks the server runs; an InvalidInput names the field and its limit."""
    prompt = st.session_state.prompt
    base = P.Stage1Params(prompt=prompt, negative_prompt=st.session_state.negative_prompt, width=int(width),
                          height=int(height), steps=int(steps), guidance_scale=float(guidance), seed=int(seed))
    detail = P.detail_params_for(base, strength=float(strength), style_strength=float(style), work_size=native_size(),
                                 assign=st.session_state.get("assign", "order"))
    P.check_int_range("images", int(count), *P.field_limits(P.Stage1Params, "batch_size"))
    cast = P.FaceIdentities(tuple(tuple(group) for group in people), tuple(current_face_prompts()))
    cast.check_with(detail.max_faces, detail.assign, prompt)
    shown_faces(people)
    if source != "a prompt" and st.session_state.get("photo") is None:
        raise InvalidInput("image", "is required: upload the photo whose faces to detail")
    return base, detail, int(count), cast


if st.button("Generate", type="primary"):
    try:
        base, detail, count, cast = checked_params()
    except InvalidInput as error:
        show_error(error)
        st.stop()
    from portrait.app.production import PromptChoice, detail_photo, produce

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

            who = {"identities": [list(g) for g in cast.photos] or None, "face_prompts": list(cast.face_prompts) or None}
            if source == "a prompt":
                production, _ = produce(get_client(), get_store(), choice, dataclasses.replace(base, seed=base.seed + i),
                                        detail, None, progress, **who)
            else:  # stage 2 alone on the user's photo (one request: no step progress to show)
                stage_bar.progress(0.5, text="detail: detailing the faces ...")
                production, _ = detail_photo(get_client(), get_store(), st.session_state.photo.getvalue(),
                                             dataclasses.replace(detail, seed=base.seed + i), **who)
                stage_bar.progress(1.0, text="detail: done")
            produced.append(production.id)
            if not production.meta.get("faces_detailed"):  # the bar's last words were "base: step n of n"
                stage_bar.progress(1.0, text=NO_FACE)
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
    if not production.meta.get("faces_detailed"):
        st.warning(NO_FACE, icon=":material/face_retouching_off:")
    columns = st.columns(3)
    for column, (name, title) in zip(columns, (("base", "Base (stage 1)"), ("mask", "Mask"), ("image", "Final"))):
        data = store.image(pid, name)
        column.image(data, caption=title, width="stretch")
        column.download_button(f"Download {name}", data, file_name=f"{pid}_{name}.png", mime="image/png",
                               key=f"download-{pid}-{name}")
    check = production.meta.get("identity_check") or []
    if production.meta.get("identities") and check:  # which face got whom, and how close it came
        from portrait.app.production import label_faces
        from portrait.images import decode_image

        st.image(label_faces(decode_image(store.image(pid, "image")), check), width="stretch",
                 caption="Who got whom: each face's box, its identity and ArcFace similarity after detailing")
        st.caption("  ·  ".join(
            f"face {f + 1}: " + ("no identity (text prompt)" if face["identity"] is None else
                                 f"identity {face['identity'] + 1}, similarity "
                                 f"{face['similarity_before'][face['identity']]:.2f} -> "
                                 f"{face['similarity'][face['identity']]:.2f}")
            for f, face in enumerate(check)))
    if st.button("Save to gallery", key=f"save-{pid}"):
        store.promote(pid)
        st.success("Saved to the gallery.")
    if faces_detailed := production.meta.get("faces_detailed", 0):
        st.caption(f"{faces_detailed} face(s) detailed")
