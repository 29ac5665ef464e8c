"""The streaming `portrait` model: stage 1 then stage 2 in one request, progress, cancellation."""

import time

import numpy as np
import pytest

from portrait.errors import InvalidInput
from portrait.params import DetailParams, Stage1Params
from tests.conftest import TOLERANCE, max_diff

BASE = Stage1Params(prompt="portrait of a woman, studio light", width=128, height=128, steps=6, seed=11)
DETAIL = DetailParams(prompt=BASE.prompt, steps=6, seed=11, work_size=128)


def test_streams_ordered_progress_then_the_three_images(grpc_client):
    events = []
    out = grpc_client.portrait(BASE, DETAIL, lambda stage, step, total: events.append((stage, step, total)))
    base_events = [e for e in events if e[0] == "base"]
    assert [e[1] for e in base_events] == list(range(1, 7)) and all(e[2] == 6 for e in base_events)
    assert events[:len(base_events)] == base_events  # stage 1 first
    assert out.base_image.shape == out.image.shape == (128, 128, 3) and out.mask.shape == (128, 128)
    # stage 1 inside portrait is the stage1 model's image for the same request
    assert max_diff(out.base_image, grpc_client.stage1(BASE).images[0]) <= TOLERANCE
    # whatever stage 2 found, pixels outside its mask are the base image's
    assert np.array_equal(out.image[out.mask == 0], out.base_image[out.mask == 0])
    detail_events = [e for e in events if e[0] == "detail"]
    if len(out.boxes):
        assert [e[1] for e in detail_events] == list(range(1, int(6 * DETAIL.strength) + 1))
    else:
        assert not detail_events and np.array_equal(out.image, out.base_image)


def test_no_detail_skips_stage_two(grpc_client):
    events = []
    out = grpc_client.portrait(BASE, None, lambda *e: events.append(e))
    assert {e[0] for e in events} == {"base"} and np.array_equal(out.image, out.base_image) and not out.mask.any()


def test_cancel_stops_within_a_step_and_the_server_serves_on(grpc_client, server):
    from clients import connect

    seen = []
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
    from tests.integration.test_stage1_triton import scheduler_counts

    before = scheduler_counts(server)["portrait_scheduler_steps_total"]
    time.sleep(3)
    after = scheduler_counts(server)
    assert seen == [1, 2, 3]
    assert after["portrait_scheduler_steps_total"] - before <= 2, "the denoise loop kept running after the cancel"
    assert after["portrait_scheduler_active_requests"] == 0
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
