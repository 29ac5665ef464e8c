"""The portrait front end: `portrait ui` (or `streamlit run ui/app.py`). Talks to Triton only through clients/."""

from pathlib import Path

import streamlit as st

HERE = Path(__file__).parent

st.set_page_config(page_title="portrait", page_icon=":frame_with_picture:", layout="wide")
# url_path: the address is the page's name (/gallery, /sweep), not its file's (/sweep_page)
page = st.navigation([
    st.Page(HERE / "create.py", title="Create", icon=":material/brush:", default=True),
    st.Page(HERE / "gallery.py", title="Gallery", icon=":material/photo_library:", url_path="gallery"),
    st.Page(HERE / "production_page.py", title="Production", icon=":material/image:", url_path="production",
            visibility="hidden"),
    st.Page(HERE / "sweep_page.py", title="Sweep", icon=":material/grid_view:", url_path="sweep"),
])
page.run()
