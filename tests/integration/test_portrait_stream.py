"""The streaming `portrait` model: stage 1 then stage 2 in one request, progress, cancellation."""

import dataclasses
import time

import numpy as np
import pytest

from portrait.errors import InvalidInput
from portrait.params import DetailParams, Stage1Params
from tests.helpers import TOLERANCE, max_diff, png, scheduler_counts, wait_scheduler_idle

BASE = Stage1Params(prompt="portrait of a woman, studio light", width=128, height=128, steps=6, seed=11)
DETAIL = DetailParams(prompt=BASE.prompt, steps=6, seed=11, work_size=128)
# The tiny set's random UNet paints noise: the default detector (MediaPipe) sees no face in it. OpenCV's Haar cascade,
# served by the `haar_server` fixture (PORTRAIT_FACE_DETECTOR=haar), sees one face in the base of seed 721 (box ~[9,
# 19, 62, 72], found in 40 of 40 tries with +-2 levels of noise added) and none in that of seed 11, so the test of
# stage 2's path through `portrait` knows it runs.
FACE_SEED = 721
FACE_BASE = dataclasses.replace(BASE, seed=FACE_SEED)
FACE_DETAIL = dataclasses.replace(DETAIL, seed=FACE_SEED)


def portrait_events(grpc_client, base, detail):
    events = []
    out = grpc_client.portrait(base, detail, lambda stage, step, total: events.append((stage, step, total)))
    return out, events


def check_stage_one(grpc_client, out, events, base):
    base_events = [e for e in events if e[0] == "base"]
    assert [e[1] for e in base_events] == list(range(1, 7)) and all(e[2] == 6 for e in base_events)
    assert events[:len(base_events)] == base_events  # stage 1 first
    assert out.base_image.shape == out.image.shape == (128, 128, 3) and out.mask.shape == (128, 128)
    # stage 1 inside portrait is the stage1 model's image for the same request
    assert max_diff(out.base_image, grpc_client.stage1(base).images[0]) <= TOLERANCE
    # pixels outside stage 2's mask are the base image's
    assert np.array_equal(out.image[out.mask == 0], out.base_image[out.mask == 0])
    return [e for e in events if e[0] == "detail"]


@pytest.fixture(scope="module")
def haar_client(haar_server):
    from clients import connect

    with connect(haar_server.grpc_url, "grpc") as client:
        yield client


def test_streams_ordered_progress_then_the_three_images(haar_client):
    """A base with a face: stage 2 runs, reports its steps after stage 1's, and details that face."""
    grpc_client = haar_client
    out, events = portrait_events(grpc_client, FACE_BASE, FACE_DETAIL)
    detail_events = check_stage_one(grpc_client, out, events, FACE_BASE)
    assert out.boxes.shape == (1, 4), f"the base of seed {FACE_SEED} no longer shows the detector a face: {out.boxes}"
    run = int(6 * FACE_DETAIL.strength)  # the img2img steps of the face pass
    assert detail_events == [("detail", i, run) for i in range(1, run + 1)]
    assert events == [e for e in events if e[0] == "base"] + detail_events  # nothing else, in that order
    x0, y0, x1, y1 = out.boxes[0]
    assert out.mask[int(y0 + y1) // 2, int(x0 + x1) // 2] == 255 and (out.mask == 0).mean() > 0.3  # the face only
    changed = np.any(out.image != out.base_image, axis=-1)
    assert changed[out.mask == 255].mean() > 0.5  # the face was re-diffused
    # stage 2 inside portrait is the face_detailer model on the same base
    alone = grpc_client.detail(png(out.base_image), FACE_DETAIL)
    assert alone.faces_found == 1 and np.array_equal(alone.boxes, out.boxes) and np.array_equal(alone.mask, out.mask)
    assert max_diff(alone.image, out.image) <= TOLERANCE


def test_a_base_without_a_face_comes_back_as_the_final_image(grpc_client):
    out, events = portrait_events(grpc_client, BASE, DETAIL)
    detail_events = check_stage_one(grpc_client, out, events, BASE)
    assert out.boxes.shape == (0, 4), f"the base of seed {BASE.seed} now shows the detector a face: {out.boxes}"
    assert not detail_events and np.array_equal(out.image, out.base_image) and not out.mask.any()


def test_no_detail_skips_stage_two(grpc_client):
    events = []
    out = grpc_client.portrait(BASE, None, lambda *e: events.append(e))
    assert {e[0] for e in events} == {"base"} and np.array_equal(out.image, out.base_image) and not out.mask.any()


def test_cancel_stops_within_a_step_and_the_server_serves_on(grpc_client, server):
    from clients import connect

    seen = []
    wait_scheduler_idle(server)  # the step counter below counts this request's steps alone
    with connect(server.grpc_url) as client:
        stream = client.stream("portrait", {
            "prompt": ("BYTES", np.array([b"portrait"], dtype=object)), "width": ("INT32", np.array([256], np.int32)),
            "height": ("INT32", np.array([256], np.int32)), "steps": ("INT32", np.array([60], np.int32)),
            "detail": ("BOOL", np.array([False]))}, ["step"])
        for out in stream:
            seen.append(int(out["step"][0]))
            if len(seen) == 3:
                stream.close()  # closing the stream cancels the request
                break
    before = scheduler_counts(server)["portrait_scheduler_steps_total"]
    assert seen == [1, 2, 3]
    # the cancel travels client -> portrait (at the next step it reports) -> the job's flag -> denoise (read every
    # step): the loop stops a few steps later, not after the 57 steps left
    counts, deadline = [before], time.monotonic() + 30
    while len(counts) < 3 or counts[-1] != counts[-3]:  # unchanged over a second: stopped
        assert time.monotonic() < deadline, f"the denoise loop kept running after the cancel: {counts}"
        time.sleep(0.5)
        counts.append(scheduler_counts(server)["portrait_scheduler_steps_total"])
    assert counts[-1] - before <= 4, f"the denoise loop ran {counts[-1] - before:g} steps after the cancel"
    wait_scheduler_idle(server, timeout=30)  # and the cancelled request leaves the scheduler
    assert scheduler_counts(server)["portrait_scheduler_active_requests"] == 0
    out = grpc_client.portrait(BASE, None)  # the slot is free and the server answers normally
    assert out.image.shape == (128, 128, 3)


def test_bad_portrait_inputs_are_named(grpc_client):
    with pytest.raises(InvalidInput, match="width"):
        list(grpc_client.stream("portrait", {"prompt": ("BYTES", np.array([b"x"], dtype=object)),
                                              "width": ("INT32", np.array([100], np.int32))}, ["image"]))
    with pytest.raises(InvalidInput, match="max_faces"):
        list(grpc_client.stream("portrait", {"prompt": ("BYTES", np.array([b"x"], dtype=object)),
                                              "max_faces": ("INT32", np.array([0], np.int32))}, ["image"]))
    assert grpc_client.portrait(BASE, None).seed == 11


def test_client_cancel_raises_cancelled_promptly(grpc_client):
    import threading

    from portrait.errors import Cancelled

    cancel, when = threading.Event(), {}

    def progress(stage, step, total):
        if step == 2:
            cancel.set()
            when["set"] = time.monotonic()

    slow = Stage1Params(prompt="portrait", width=256, height=256, steps=60, seed=2)
    with pytest.raises(Cancelled):
        grpc_client.portrait(slow, None, progress, cancel)
    assert time.monotonic() - when["set"] < 5  # one step is ~0.1 s here; generous for a loaded machine
    assert grpc_client.portrait(BASE, None).image.shape == (128, 128, 3)
