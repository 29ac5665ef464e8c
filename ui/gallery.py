"""Gallery: the wall. Saved portraits as captioned tiles in as many columns as the width holds, newest first; the
next page loads as the end of the wall scrolls into view; filters by identity photo, idea and day; new saves appear
by themselves; a tile opens its production. Thumbnails come from a content-addressed cache (ProductionStore)."""

from __future__ import annotations

from datetime import date

import streamlit as st

from portrait.app.store import GalleryFilter, id_date
from ui.common import WALL_PAGE as PER_PAGE
from ui.common import get_store, show_error

TILE_WIDTH = 220  # px; the wall's columns are as many tiles as the width holds
POLL_S = 5  # how often the wall looks for new saves

# The wall's behaviour in the browser: (1) its end, once within 600 px of the view, asks for the next page (once
# per page); (2) a plain click on a tile opens the production in this tab, through Streamlit's page switch (the
# image's own link opens a new tab; a middle or modified click still does).
_WALL_JS = """
export default function (component) {
  const { data, setTriggerValue, parentElement } = component;
  const host = parentElement.host ?? parentElement;  // the component's element (its shadow root's host)
  let observer = null;
  if (data.more) {
    observer = new IntersectionObserver((entries) => {
      if (entries.some((entry) => entry.isIntersecting)) {
        observer.disconnect();
        setTriggerValue("more", data.shown);
      }
    }, { rootMargin: "600px" });
    observer.observe(host);
  }
  const open = (event) => {
    const link = event.target.closest && event.target.closest(".st-key-wall a[href*='production?id=']");
    if (!link || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    setTriggerValue("open", new URL(link.href).searchParams.get("id"));
  };
  document.addEventListener("click", open, true);
  return () => { if (observer) observer.disconnect(); document.removeEventListener("click", open, true); };
}
"""
wall_behaviour = st.components.v2.component("portrait_wall", html="<div style='height:1px'></div>", js=_WALL_JS)

st.title("Gallery")
store = get_store()
st.session_state.setdefault("wall_shown", PER_PAGE)


def reset_wall() -> None:  # a new filter starts from its first page
    st.session_state.wall_shown = PER_PAGE


try:
    faces, ideas = store.gallery_choices()
except Exception as error:
    show_error(error)
    st.stop()
face_col, idea_col, day_col = st.columns([1, 2, 2])
face = face_col.selectbox("Identity photo", [None, *faces], key="wall_face", on_change=reset_wall,
                          format_func=lambda k: "anyone" if k is None else
                          f"photo {list(faces).index(k) + 1} ({faces[k]} saved)")
idea = idea_col.selectbox("Idea", [None, *ideas], key="wall_idea", on_change=reset_wall,
                          format_func=lambda i: "any idea" if i is None else f"{i} ({ideas[i]})")
days = day_col.date_input("Saved between", value=(), key="wall_days", on_change=reset_wall, format="YYYY-MM-DD")
if face is not None:
    face_col.image(store.face(face), width=64)
since, until = (tuple(days) + (None, None))[:2] if isinstance(days, tuple | list) else (days, days)
where = GalleryFilter(face=face, idea=idea, since=since, until=until or since)

ids = store.gallery_ids(where)
shown = min(st.session_state.wall_shown, len(ids))
if not ids:
    st.info("No saved portraits yet: press Save to gallery under a result on the Create page." if where == GalleryFilter()
            else "No saved portrait matches these filters.")
st.caption(f"{shown} of {len(ids)} portraits" if ids else "")

wall = st.container(horizontal=True, gap="small", key="wall")
for pid in ids[:shown]:
    record = store.gallery_record(pid)
    tile = wall.container(width=TILE_WIDTH, gap=None)
    # a tile opens the production (Production page, id in the URL, so the address can be shared)
    tile.image(store.thumbnail(pid), caption=record.get("caption") or "(no keywords)", width="stretch",
               link=f"production?id={pid}")
    made: date | None = id_date(pid)
    tile.caption(f"seed {record.get('seed', '?')} · {made.isoformat() if made else ''}")


def load_more() -> None:
    st.session_state.wall_shown += PER_PAGE


if ids:
    opened = wall_behaviour(key="wall_behaviour", data={"shown": shown, "more": shown < len(ids)},
                            on_more_change=load_more, on_open_change=lambda: None).open
    if opened in ids:
        st.switch_page("production_page.py", query_params={"id": opened})


@st.fragment(run_every=POLL_S)
def watch_for_saves(newest: str | None) -> None:
    """New saves appear without a reload: a listing every POLL_S seconds, a rerun when the newest item changed."""
    latest = store.gallery_ids(where)
    if (latest[0] if latest else None) != newest:
        st.rerun()


watch_for_saves(ids[0] if ids else None)
