"""A store that cannot be written or read fails with StoreError naming the store and the key, not a raw OSError or
boto3 traceback; a missing production stays InvalidInput (the caller's mistake, not the store's)."""

from __future__ import annotations

import numpy as np
import pytest

from portrait.app.store import LocalBackend, ProductionStore, S3Backend, StoreError
from portrait.errors import InvalidInput
from portrait.images import encode_png

IMAGES = {"image": np.zeros((8, 8, 3), np.uint8), "base": np.zeros((8, 8, 3), np.uint8), "mask": np.zeros((8, 8), np.uint8)}


def test_unwritable_local_store_is_a_store_error_and_loses_nothing(tmp_path):
    """A path in the way of a production's folder (root writes through permissions, so the test uses what stops root
    too): the error names the key and the store; what was saved before is intact."""
    root = tmp_path / "store"
    store = ProductionStore(LocalBackend(root))
    saved = store.save_production(IMAGES, {"prompt": "p"})
    (root / "faces").write_text("in the way")
    with pytest.raises(StoreError, match=rf"cannot write faces/\S+ to the store {root}: (File exists|Not a directory)"):
        store.save_face(encode_png(np.full((8, 8, 3), 200, np.uint8)))
    assert [p.id for p in store.productions()] == [saved.id]
    assert store.image(saved.id)[:4] == b"\x89PNG"


def test_local_store_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create the store"):
        LocalBackend(tmp_path / "file" / "store")


def test_s3_store_without_its_bucket_is_a_store_error():
    import boto3
    from moto import mock_aws

    with mock_aws():
        store = ProductionStore(S3Backend("no-such-bucket", "team-a", client=boto3.client("s3", region_name="us-east-1")))
        with pytest.raises(StoreError, match=r"cannot write productions/\S+ in the store s3://no-such-bucket/team-a/: .*NoSuchBucket"):
            store.save_production(IMAGES, {"prompt": "p"})
        with pytest.raises(StoreError, match="cannot list"):
            store.productions()


def test_missing_production_is_still_invalid_input(tmp_path):
    import boto3
    from moto import mock_aws

    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="portraits")
        for backend in (LocalBackend(tmp_path), S3Backend("portraits", client=boto3.client("s3", region_name="us-east-1"))):
            with pytest.raises(InvalidInput, match="no production 'nope'"):
                ProductionStore(backend).production("nope")
