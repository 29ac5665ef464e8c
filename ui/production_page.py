"""Production: one stored portrait opened from the wall (/production?id=<id>): base, mask and final, the prompt and
every parameter, the identity photos, and "Use these settings" to make another on Create."""

from __future__ import annotations

import streamlit as st

from portrait.errors import PortraitError
from ui.common import get_store, show_error

store = get_store()
pid = st.query_params.get("id", "")
st.page_link("gallery.py", label="Back to the gallery", icon=":material/arrow_back:")
try:
    production = store.production(pid)
except PortraitError as error:
    show_error(error)
    st.stop()
meta = production.meta
st.title(meta.get("idea") or "Production")
st.caption(f"{pid} · made {str(meta.get('created', ''))[:19].replace('T', ' ')} UTC · seed {meta.get('seed')}")

columns = st.columns(3)
for column, (name, title) in zip(columns, (("base", "Base (stage 1)"), ("mask", "Mask"), ("image", "Final"))):
    try:
        data = store.image(pid, name)
    except KeyError:
        column.caption(f"{title}: not stored")
        continue
    column.image(data, caption=title, width="stretch")
    column.download_button(f"Download {name}", data, file_name=f"{pid}_{name}.png", mime="image/png",
                           key=f"download-{name}")
if not meta.get("faces_detailed"):
    st.caption("Stage 2 found no face in the base image: the final image is the base image.")


def use_these_settings() -> None:
    """Fill the Create page's widgets with this production's prompt and parameters (their keys), then go there."""
    stage1 = (meta.get("params") or {}).get("stage1") or {}
    detail = (meta.get("params") or {}).get("detail") or {}
    values = {"prompt": meta.get("prompt", ""), "negative_prompt": meta.get("negative_prompt", ""),
              "idea": meta.get("idea") or "", "idea_used": meta.get("idea"), "keywords": meta.get("keywords") or [],
              "steps": stage1.get("steps"), "guidance": stage1.get("guidance_scale"), "seed": meta.get("seed"),
              "width": stage1.get("width"), "height": stage1.get("height"),
              "style_strength": detail.get("style_strength"), "strength": detail.get("strength"),
              "source": "a prompt"}
    st.session_state.reuse_settings = {"id": pid, "values": {k: v for k, v in values.items() if v is not None}}


if st.button("Use these settings", type="primary", on_click=use_these_settings,
             help="the prompt and parameters go to the Create page (the identity photos are shown below)"):
    st.switch_page("create.py")

left, right = st.columns([3, 2])
with left:
    st.subheader("Prompt")
    st.code(meta.get("prompt", ""), language=None, wrap_lines=True)
    st.caption("Negative prompt")
    st.code(meta.get("negative_prompt", ""), language=None, wrap_lines=True)
    if meta.get("keywords"):
        st.caption("Keywords: " + ", ".join(meta["keywords"]))
with right:
    st.subheader("Identity photos")
    groups = [group for group in meta.get("identities") or [meta.get("faces") or []] if group]
    if not groups:
        st.caption("none: a text-only portrait")
    for k, group in enumerate(groups):
        try:
            st.image([store.face(key) for key in group], width=96,
                     caption=[f"person {k + 1}, photo {i + 1}" for i in range(len(group))])
        except (KeyError, PortraitError) as error:
            show_error(error)

st.subheader("Parameters")
params = meta.get("params") or {}
rows = [{"stage": stage, "parameter": name, "value": str(value)}
        for stage in ("stage1", "detail") for name, value in (params.get(stage) or {}).items()
        if name not in ("prompt", "negative_prompt")]
rows += [{"stage": "", "parameter": name, "value": str(meta[name])}
         for name in ("seed", "faces_detailed", "truncated_tokens", "face_prompts", "model_set", "timings", "sweep")
         if name in meta]
st.dataframe(rows, hide_index=True, width="stretch")
