"""Shared fixtures: the tiny default model set, a real Triton server for the session, diffusers' reference; and the
`unit` / `integration` markers, given by folder (helpers shared by several modules are in tests/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from portrait.models.tiny import build_tiny_model_set
from portrait.settings import get_settings

TESTS = Path(__file__).resolve().parent
MARKER_FOLDERS = {"unit": pytest.mark.unit, "integration": pytest.mark.integration}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything
def pytest_collection_modifyitems(items):
    """tests/unit/* is marked `unit` (no server), tests/integration/* `integration` (a real Triton server)."""
    for item in items:
        path = Path(str(item.path)).resolve()
        if path.is_relative_to(TESTS):
            folder = path.relative_to(TESTS).parts[0]
            if folder in MARKER_FOLDERS:
                item.add_marker(MARKER_FOLDERS[folder])


@pytest.fixture(scope="session")
def models_dir():
    return build_tiny_model_set(get_settings().models_dir)


@pytest.fixture(scope="session")
def sdxl_dir(models_dir):
    return models_dir / "sdxl"


@pytest.fixture(scope="session")
def photomaker_file(models_dir):
    """The default set's photomaker-v2.bin: its LoRA is fused into the served UNet, so every reference fuses it too."""
    from portrait.models.checkpoint import find_photomaker_file

    return find_photomaker_file(models_dir)


@pytest.fixture(scope="session")
def server(models_dir):
    """The bundled tritonserver on free ports, started once per session and stopped at its end."""
    from portrait.serving.server import TritonServer

    with TritonServer.create(free_ports=True) as running:
        yield running


@pytest.fixture(scope="session")
def haar_server(models_dir):
    """A second server whose face_detector is OpenCV's Haar cascade (PORTRAIT_FACE_DETECTOR=haar): the tiny set's random
    UNet paints noise in which no trained detector sees a face, Haar sees one in some seeds' bases, so stage 2 runs
    on a generated base (tests/integration/test_portrait_stream.py)."""
    import dataclasses

    from portrait.serving.server import TritonServer

    with TritonServer.create(dataclasses.replace(get_settings(), face_detector="haar"), free_ports=True) as running:
        yield running


@pytest.fixture(scope="session")
def grpc_client(server):
    from clients import connect

    with connect(server.grpc_url, "grpc") as client:
        yield client


@pytest.fixture(scope="session")
def http_client(server):
    from clients import connect

    with connect(server.http_url, "http") as client:
        yield client


@pytest.fixture(scope="session")
def diffusers_pipe(sdxl_dir, photomaker_file):
    """diffusers' SDXL pipeline with PhotoMaker's LoRA loaded and fused the way PhotoMaker's own pipeline does."""
    from diffusers import StableDiffusionXLPipeline

    from portrait.models.identity import read_photomaker_file

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_dir)
    if photomaker_file is not None:
        pipe.load_lora_weights(read_photomaker_file(photomaker_file)["lora_weights"], adapter_name="photomaker")
        pipe.fuse_lora()
    pipe.set_progress_bar_config(disable=True)
    return pipe
