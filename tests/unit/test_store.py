"""The productions store: metadata round trips, restarts lose nothing, concurrent saves lose nothing; local and S3."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from portrait.app.store import LocalBackend, ProductionStore, S3Backend
from portrait.errors import InvalidInput


@pytest.fixture(params=["local", "s3"])
def make_store(request, tmp_path):
    """A factory: each call opens the same store anew (a restart of the app or the server)."""
    if request.param == "local":
        yield lambda: ProductionStore(LocalBackend(tmp_path / "store"))
        return
    import boto3
    from moto import mock_aws

    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="portraits")
        yield lambda: ProductionStore(S3Backend("portraits", "team-a", client=boto3.client("s3", region_name="us-east-1")))


def images(value: int) -> dict:
    image = np.full((16, 24, 3), value, np.uint8)
    return {"image": image, "base": image // 2, "mask": image[..., 0]}


META = {"idea": "corporate confidence", "prompt": "portrait of a person img, suit", "keywords": ["suit", "office"],
        "params": {"stage1": {"steps": 10, "guidance_scale": 5.0}}, "seed": 7,
        "model_set": {"models": "/m", "identity": True}, "timings": {"total_s": 1.5}}


def test_metadata_round_trips(make_store):
    store = make_store()
    saved = store.save_production(images(40), META)
    again = make_store().production(saved.id)
    assert {k: again.meta[k] for k in META} == META
    assert again.meta["id"] == saved.id and again.meta["created"]
    import io

    from PIL import Image

    assert np.array(Image.open(io.BytesIO(make_store().image(saved.id, "base")))).max() == 20
    assert again.caption == "suit, office"


def test_a_production_and_its_gallery_entry_survive_a_restart(make_store):
    first = make_store()
    a = first.save_production(images(1), META)
    b = first.save_production(images(2), META)
    first.promote(a.id, caption="chosen")
    restarted = make_store()
    assert [p.id for p in restarted.productions()] == [b.id, a.id]  # newest first
    items, pages = restarted.gallery()
    assert [(p.id, caption) for p, caption in items] == [(a.id, "chosen")] and pages == 1


def test_concurrent_saves_lose_nothing(make_store):
    store = make_store()

    def save(i: int) -> str:
        production = store.save_production(images(i), {**META, "seed": i})
        store.promote(production.id)
        return production.id

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(save, range(24)))
    assert len(set(ids)) == 24
    restarted = make_store()
    assert sorted(p.meta["seed"] for p in restarted.productions()) == list(range(24))
    items, pages = restarted.gallery(page=0, per_page=10)
    assert pages == 3 and len(items) == 10
    assert sum(len(restarted.gallery(page=k, per_page=10)[0]) for k in range(3)) == 24


def test_faces_are_stored_once(make_store):
    import io

    from PIL import Image

    store = make_store()
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, format="PNG")
    assert store.save_face(buffer.getvalue()) == store.save_face(buffer.getvalue())
    assert len(store.backend.list("faces/")) == 1


def test_unknown_production_and_escaping_keys(tmp_path):
    store = ProductionStore(LocalBackend(tmp_path / "store"))
    with pytest.raises(InvalidInput, match="no production 'nope'"):
        store.production("nope")
    with pytest.raises(InvalidInput, match="leaves the store"):
        store.backend.put("../outside.txt", b"x")
