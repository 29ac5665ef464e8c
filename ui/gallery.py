"""Gallery: saved portraits in a grid with their keyword captions, newest first, paged."""

import streamlit as st

from ui.common import get_store, show_error

PER_PAGE, COLUMNS = 12, 4

st.title("Gallery")
store = get_store()
page = st.session_state.setdefault("gallery_page", 0)
try:
    items, pages = store.gallery(page, PER_PAGE)
except Exception as error:
    show_error(error)
    st.stop()
if page >= pages:  # the gallery shrank (another store?) since this page was chosen
    st.session_state.gallery_page = page = pages - 1
    items, pages = store.gallery(page, PER_PAGE)
if not items:
    st.info("No saved portraits yet: press Save to gallery under a result on the Create page.")
columns = st.columns(COLUMNS)
for i, (production, caption) in enumerate(items):
    with columns[i % COLUMNS]:
        st.image(store.image(production.id), caption=caption or "(no keywords)", width="stretch")
        st.caption(f"seed {production.meta.get('seed')} · {production.meta.get('created', '')[:16]}")


def turn(by: int) -> None:  # a callback: the page changes before the next run draws the grid
    st.session_state.gallery_page += by


previous, label, following = st.columns([1, 2, 1])
previous.button("Newer", disabled=page == 0, on_click=turn, args=(-1,))
label.write(f"page {page + 1} of {pages}")
following.button("Older", disabled=page >= pages - 1, on_click=turn, args=(1,))
