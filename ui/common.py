"""What every page shares: the Triton client, the store, the sample face, the model's native size."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from portrait.errors import PortraitError

WALL_PAGE = 24  # Gallery: tiles a page, what loads when the end of the wall comes into view


@st.cache_resource
def get_client():
    from clients import connect
    from portrait.settings import get_settings

    return connect(get_settings().url)


@st.cache_resource
def get_store():
    from portrait.app.store import open_store

    return open_store()


@st.cache_data
def native_size() -> int:
    from portrait.models.checkpoint import read_sdxl_info
    from portrait.settings import get_settings

    return read_sdxl_info(get_settings().sdxl_dir).default_size


@st.cache_data
def sample_faces() -> dict[str, bytes]:
    """Bundled sample identity photos (scikit-image's astronaut: Eileen Collins, public domain, NASA)."""
    import skimage

    return {"astronaut (sample)": (Path(skimage.__file__).parent / "data" / "astronaut.png").read_bytes()}


@st.cache_data(max_entries=32)
def upright(data: bytes, field: str = "id_images"):
    """A user's photo as every viewer shows it (EXIF orientation applied): the decoder the server runs, so what the
    page shows is what the server sees. An unreadable file raises InvalidInput naming the field."""
    from portrait.images import decode_image

    return decode_image(data, field)


def show_error(error: Exception) -> None:
    """A plain message, never a traceback."""
    if isinstance(error, PortraitError):
        st.error(str(error))
    else:
        st.error(f"Something went wrong: {type(error).__name__}: {error}")
