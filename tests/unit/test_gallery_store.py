"""The gallery wall's store side: content-addressed thumbnails cached on local disk (a warm wall reads no object),
filters that are listings (identity photo, idea, day), and records of items saved before thumbnails existed."""

from __future__ import annotations

import io
import json
from datetime import date

import numpy as np
import pytest
from PIL import Image

from portrait.app.store import (
    THUMB_SIZE,
    GalleryFilter,
    LocalBackend,
    ProductionStore,
    S3Backend,
    ThumbnailCache,
    thumbnail_key,
)


class Counting:
    """A backend that counts the requests it serves, by kind."""

    def __init__(self, backend):
        self.backend, self.calls = backend, {"get": 0, "put": 0, "exists": 0, "list": 0}

    def __getattr__(self, name):
        method = getattr(self.backend, name)
        if name in self.calls:
            def counted(*args):
                self.calls[name] += 1
                return method(*args)
            return counted
        return method


@pytest.fixture(params=["local", "s3"])
def backend(request, tmp_path):
    if request.param == "local":
        yield LocalBackend(tmp_path / "store")
        return
    import boto3
    from moto import mock_aws

    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="portraits")
        yield S3Backend("portraits", "team-a", client=boto3.client("s3", region_name="us-east-1"))


def picture(value: int, size=(600, 400)) -> np.ndarray:
    rng = np.random.default_rng(value)
    return rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)


def save(store: ProductionStore, value: int, idea: str | None, faces: list[str]) -> str:
    image = picture(value)
    production = store.save_production({"image": image, "base": image, "mask": image[..., 0]},
                                       {"idea": idea, "prompt": "p", "keywords": [f"k{value}"], "seed": value,
                                        "faces": faces})
    store.promote(production.id)
    return production.id


def test_promote_writes_a_content_addressed_thumbnail_and_the_index(backend, tmp_path):
    store = ProductionStore(backend, ThumbnailCache(tmp_path / "cache"))
    face = store.save_face(_png(picture(99, (64, 64))))
    pid = save(store, 1, "corporate confidence", [face])
    record = store.gallery_record(pid)
    assert record["thumb"] == thumbnail_key(store.image(pid)) and record["idea"] == "corporate confidence"
    assert record["faces"] == [face] and record["caption"] == "k1" and record["seed"] == 1
    thumb = Image.open(io.BytesIO(backend.get(record["thumb"])))
    assert thumb.format == "JPEG" and thumb.size == (THUMB_SIZE, 256)  # 600x400 -> longer side 384
    # the same final image saved twice: one thumbnail object
    image = Image.open(io.BytesIO(store.image(pid)))
    again = store.save_production({"image": np.array(image)}, {"prompt": "p"})
    store.promote(again.id)
    assert store.gallery_record(again.id)["thumb"] == record["thumb"]
    assert len(backend.list("thumbs/")) == 1


def test_a_warm_wall_reads_no_object(backend, tmp_path):
    """Thumbnails come from the local cache; a restarted app (new store object, same cache directory) lists the
    gallery and reads only the records it has not seen, never a thumbnail or an image."""
    first = ProductionStore(backend, ThumbnailCache(tmp_path / "cache"))
    ids = [save(first, v, "ocean calm", []) for v in range(5)]
    cold = ProductionStore(counting := Counting(backend), ThumbnailCache(tmp_path / "cache"))
    wall = [cold.thumbnail(pid) for pid in cold.gallery_ids()]
    assert counting.calls["get"] == 5  # the five records; the thumbnails were on disk
    assert wall == [first.thumbnail(pid) for pid in reversed(ids)]
    counting.calls.update(get=0)
    assert [cold.thumbnail(pid) for pid in cold.gallery_ids()] == wall and counting.calls["get"] == 0


def test_an_empty_cache_reads_each_thumbnail_once(backend, tmp_path):
    store = ProductionStore(backend, ThumbnailCache(tmp_path / "a"))
    pid = save(store, 3, None, [])
    cold = ProductionStore(counting := Counting(backend), ThumbnailCache(tmp_path / "b"))
    data = cold.thumbnail(pid)
    assert counting.calls["get"] == 2  # the record, the thumbnail (never the full image)
    assert cold.thumbnail(pid) == data and counting.calls["get"] == 2
    assert (tmp_path / "b" / thumbnail_key(store.image(pid)).split("/")[1]).read_bytes() == data


def test_a_record_saved_before_thumbnails_gets_one(backend, tmp_path):
    store = ProductionStore(backend, ThumbnailCache(tmp_path / "cache"))
    production = store.save_production({"image": picture(5)}, {"prompt": "p", "keywords": ["old"]})
    backend.put(f"gallery/{production.id}.json", json.dumps({"id": production.id, "caption": "old"}).encode())
    data = store.thumbnail(production.id)
    assert Image.open(io.BytesIO(data)).size == (THUMB_SIZE, 256)
    assert backend.exists(thumbnail_key(store.image(production.id)))
    assert store.gallery_ids() == [production.id]


def test_filters_by_identity_photo_idea_and_day(backend, tmp_path):
    store = ProductionStore(backend, ThumbnailCache(tmp_path / "cache"))
    alice, bob = (store.save_face(_png(picture(v, (32, 32)))) for v in (50, 60))
    a = save(store, 1, "corporate confidence", [alice])
    b = save(store, 2, "ocean calm", [alice, bob])
    c = save(store, 3, "ocean calm", [])
    assert store.gallery_ids() == [c, b, a]
    assert store.gallery_ids(GalleryFilter(face=alice)) == [b, a]
    assert store.gallery_ids(GalleryFilter(face=bob)) == [b]
    assert store.gallery_ids(GalleryFilter(idea="ocean calm")) == [c, b]
    assert store.gallery_ids(GalleryFilter(face=bob, idea="corporate confidence")) == []
    today = date.fromisoformat(f"{a[:4]}-{a[4:6]}-{a[6:8]}")
    assert store.gallery_ids(GalleryFilter(since=today, until=today)) == [c, b, a]
    assert store.gallery_ids(GalleryFilter(until=date(2000, 1, 1))) == []
    faces, ideas = store.gallery_choices()
    assert faces == {alice: 2, bob: 1} and ideas == {"ocean calm": 2, "corporate confidence": 1}


def test_listing_pages_past_a_thousand_keys(tmp_path):
    """S3 answers 1,000 keys a request: a gallery larger than that is listed whole."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="portraits")
        backend = Counting(S3Backend("portraits", client=client))
        for i in range(1005):
            backend.backend.put(f"gallery/20261204T000000{i:06d}Z-0000.json", b"{}")
        ids = ProductionStore(backend, ThumbnailCache(None)).gallery_ids()
        assert len(ids) == 1005 and ids[0].endswith("001004Z-0000") and backend.calls["get"] == 0


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()
