"""The portrait front end: `portrait ui` (or `streamlit run ui/app.py`). Talks to Triton only through clients/."""

from pathlib import Path

import streamlit as st

HERE = Path(__file__).parent

st.set_page_config(page_title="portrait", page_icon=":frame_with_picture:", layout="wide")
page = st.navigation([
    st.Page(HERE / "create.py", title="Create", icon=":material/brush:", default=True),
    st.Page(HERE / "gallery.py", title="Gallery", icon=":material/photo_library:"),
    st.Page(HERE / "sweep_page.py", title="Sweep", icon=":material/grid_view:"),
])
page.run()
