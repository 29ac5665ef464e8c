"""Sweep: a YAML grid (faces x ideas x parameters x seeds), validated before it starts, run with progress for the
whole sweep, every result stored as a production, and the labelled contact sheet at the end."""

import streamlit as st

from portrait.errors import PortraitError
from ui.common import get_client, get_store, native_size, show_error

EXAMPLE = """name: study
faces: []                      # identity photo paths (relative to the project), one row each
class_word: person
ideas: ["corporate confidence", "rainy noir"]
params: {steps: 4}
grid: {guidance_scale: [3.0, 6.0]}
seeds: [0]
"""

st.title("Sweep")
text = st.text_area("Sweep (YAML)", value=EXAMPLE, height=260, key="sweep_yaml")


def parsed():
    from portrait.app.sweep import parse_sweep
    from portrait.settings import PROJECT_ROOT

    return parse_sweep(text, PROJECT_ROOT, native_size())


validate, run = st.columns(2)
if validate.button("Validate"):
    try:
        sweep = parsed()
        st.success(f"{sweep.size} portraits: {len(sweep.rows)} rows (face x idea) x {len(sweep.columns)} columns "
                   f"(grid x seeds)")
    except PortraitError as error:
        show_error(error)
if run.button("Run sweep", type="primary"):
    from portrait.app.sweep import run_sweep

    try:
        sweep = parsed()
    except PortraitError as error:
        show_error(error)
        st.stop()
    bar = st.progress(0.0, text=f"0 of {sweep.size}")
    try:
        record = run_sweep(get_client(), get_store(), sweep,
                           lambda done, total, what: bar.progress(done / total, text=f"{done} of {total}: {what}"))
    except Exception as error:  # a plain message, never a traceback
        show_error(error)
        st.stop()
    st.success(f"{len(record['productions'])} productions stored; contact sheet at {record['contact_sheet']}")
    st.image(record["sheet"], caption=record["id"], width="stretch")
