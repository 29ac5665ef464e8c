"""The productions store: every result with its metadata, in a local directory or an S3-compatible bucket.

Layout (keys under the store's root or bucket prefix):

    faces/<sha256>.png                      identity photos, content-addressed (the same photo is stored once)
    productions/<id>/meta.json              idea, prompt, keywords, parameters, seed, model set, timings, faces
    productions/<id>/{image,base,mask}.png  final, stage 1, paste-back mask
    gallery/<id>.json                       a production promoted by "Save to gallery" (caption, idea, identity
                                            photos, when, its thumbnail's key): one GET paints a wall tile
    gallery-index/face/<sha>/<id>           empty markers: the gallery's items by identity photo and by idea, so
    gallery-index/idea/<quoted idea>/<id>   that a filter is a listing (1,000 keys a request), not a read per item
    thumbs/<sha256 of image.png>-<px>.jpg   wall thumbnails, content-addressed (and cached on local disk)
    curated/<name>/...                      sweep contact sheets and their sweep.json

Ids start with a UTC timestamp, so key order is age order; a random suffix keeps concurrent saves apart.
Every object is written whole (local: temp file + atomic rename; S3: one PUT) and meta.json last, so a
production is listed only once all of its images are there. Nothing is ever rewritten in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, unquote

import numpy as np

from portrait.errors import InvalidInput, PortraitError
from portrait.images import decode_image, encode_png

IMAGE_NAMES = ("image", "base", "mask")
THUMB_SIZE = 384  # px, the longer side: a wall tile (about 200 px wide) at twice the pixel density
THUMB_QUALITY = 85
DEFAULT_THUMB_CACHE = Path.home() / ".cache" / "portrait" / "thumbs"


class StoreError(PortraitError):
    """The store cannot be read or written (missing bucket, credentials, permissions, a full disk ...): the store
    and what failed are named; nothing half-written is left (LocalBackend writes atomically)."""


class StorageBackend(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> list[str]: ...  # keys under prefix, sorted


class LocalBackend:
    def __init__(self, root: Path):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot create the store {self.root}: {error.strerror}") from None

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise InvalidInput("key", f"{key!r} leaves the store")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self.path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        except OSError as error:
            raise StoreError(f"cannot write {key} to the store {self.root}: {error.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic: readers see the old object or the whole new one
        except BaseException as error:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(error, OSError):
                raise StoreError(f"cannot write {key} to the store {self.root}: {error.strerror}") from None
            raise

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as error:
            raise StoreError(f"cannot read {key} from the store {self.root}: {error.strerror}") from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))

    def __str__(self) -> str:
        return str(self.root)


class S3Backend:
    """Any S3-compatible bucket (AWS, MinIO, Ceph ...) through boto3; credentials from boto3's usual chain."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, client=None):
        import boto3

        self.bucket, self.prefix = bucket, prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url)

    @contextlib.contextmanager
    def failing_as(self, what: str, key: str):
        """boto3's errors (no bucket, no credentials, access denied, unreachable endpoint) -> StoreError."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except self.client.exceptions.NoSuchKey:
            raise KeyError(key) from None
        except (BotoCoreError, ClientError) as error:
            raise StoreError(f"cannot {what} {key or 'keys'} in the store {self}: {error}") from None

    def put(self, key: str, data: bytes) -> None:
        with self.failing_as("write", key):
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def get(self, key: str) -> bytes:
        with self.failing_as("read", key):
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()

    def exists(self, key: str) -> bool:
        with self.failing_as("look up", key):
            return bool(self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix + key, MaxKeys=1).get("KeyCount"))

    def list(self, prefix: str) -> list[str]:
        keys = []
        with self.failing_as("list", prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                keys += [o["Key"][len(self.prefix):] for o in page.get("Contents", [])]
        return sorted(keys)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class Production:
    id: str
    meta: dict = field(default_factory=dict)

    @property
    def caption(self) -> str:
        keywords = self.meta.get("keywords") or []
        return ", ".join(keywords[:6]) if keywords else self.meta.get("prompt", "")[:80]


def new_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(4)


def id_date(pid: str) -> date | None:
    """The UTC day a production was made, read from its id (no object read)."""
    try:
        return datetime.strptime(pid[:8], "%Y%m%d").date()
    except ValueError:
        return None


def thumbnail_key(image_png: bytes) -> str:
    """Content-addressed: the same final image always has the same thumbnail name, in the store and in every cache."""
    return f"thumbs/{hashlib.sha256(image_png).hexdigest()[:32]}-{THUMB_SIZE}.jpg"


def make_thumbnail(image_png: bytes) -> bytes:
    """A JPEG whose longer side is THUMB_SIZE (never enlarged)."""
    from PIL import Image

    picture = Image.open(io.BytesIO(image_png)).convert("RGB")
    picture.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=THUMB_QUALITY, optimize=True)
    return out.getvalue()


class ThumbnailCache:
    """Thumbnails by content-addressed name: in memory (the most recent MEMORY_ITEMS) and on local disk, so the
    wall reads the object store once per thumbnail and machine. A name never changes meaning, so nothing expires;
    a disk that cannot be written (a read-only home) only costs the disk layer."""

    MEMORY_ITEMS = 1024

    def __init__(self, directory: Path | None = DEFAULT_THUMB_CACHE):
        self.directory = Path(directory) if directory is not None else None
        self.memory: OrderedDict[str, bytes] = OrderedDict()

    def get(self, name: str) -> bytes | None:
        if name in self.memory:
            self.memory.move_to_end(name)
            return self.memory[name]
        if self.directory is None:
            return None
        try:
            data = (self.directory / name).read_bytes()
        except OSError:
            return None
        self.remember(name, data)
        return data

    def put(self, name: str, data: bytes) -> None:
        self.remember(name, data)
        if self.directory is None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{name}.")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.directory / name)
        except OSError:
            pass

    def remember(self, name: str, data: bytes) -> None:
        self.memory[name] = data
        self.memory.move_to_end(name)
        while len(self.memory) > self.MEMORY_ITEMS:
            self.memory.popitem(last=False)


@dataclass(frozen=True)
class GalleryFilter:
    """What the wall shows: every saved item, or those with an identity photo (its faces/ key), an idea, a day range."""

    face: str | None = None
    idea: str | None = None
    since: date | None = None
    until: date | None = None


class ProductionStore:
    def __init__(self, backend: StorageBackend, thumbs: ThumbnailCache | None = None):
        self.backend = backend
        self.thumbs = thumbs if thumbs is not None else ThumbnailCache()
        self._records: OrderedDict[str, dict] = OrderedDict()  # gallery records never change once written

    def save_face(self, data: bytes) -> str:
        """An identity photo, stored once per content (upright, as the server read it); returns its key."""
        key = f"faces/{hashlib.sha256(data).hexdigest()[:32]}.png"
        if not self.backend.exists(key):
            self.backend.put(key, encode_png(decode_image(data, "id_images")))
        return key

    def save_production(self, images: dict[str, np.ndarray], meta: dict) -> Production:
        """Images (image, base, mask) and their metadata; meta.json is written last (the commit point)."""
        pid = new_id()
        for name in IMAGE_NAMES:
            if name in images:
                self.backend.put(f"productions/{pid}/{name}.png", encode_png(images[name]))
        meta = {**meta, "id": pid, "created": datetime.now(UTC).isoformat()}
        self.backend.put(f"productions/{pid}/meta.json", json.dumps(meta, indent=2, default=str).encode())
        return Production(pid, meta)

    def production(self, pid: str) -> Production:
        try:
            return Production(pid, json.loads(self.backend.get(f"productions/{pid}/meta.json")))
        except KeyError:
            raise InvalidInput("production", f"no production {pid!r} in {self.backend}") from None

    def image(self, pid: str, name: str = "image") -> bytes:
        return self.backend.get(f"productions/{pid}/{name}.png")

    def productions(self) -> list[Production]:
        """Every complete production, newest first."""
        ids = [k.split("/")[1] for k in self.backend.list("productions/") if k.endswith("/meta.json")]
        return [self.production(pid) for pid in sorted(ids, reverse=True)]

    def face(self, key: str) -> bytes:
        """An identity photo by its faces/ key (as a production's meta names it)."""
        if not key.startswith("faces/"):
            raise InvalidInput("face", f"{key!r} is not an identity photo's key")
        return self.backend.get(key)

    def promote(self, pid: str, caption: str | None = None) -> Production:
        """"Save to gallery": its thumbnail (content-addressed, written once), its index markers, then the gallery
        record (the commit point) pointing at the production (which stays where it is)."""
        production = self.production(pid)
        image = self.image(pid)
        thumb, data = thumbnail_key(image), make_thumbnail(image)
        if not self.backend.exists(thumb):
            self.backend.put(thumb, data)
        self.thumbs.put(Path(thumb).name, data)  # the app that saved it shows it next
        faces = [k for k in production.meta.get("faces") or [] if isinstance(k, str)]
        idea = production.meta.get("idea")
        for face in dict.fromkeys(faces):
            self.backend.put(f"gallery-index/face/{Path(face).stem}/{pid}", b"")
        if idea:
            self.backend.put(f"gallery-index/idea/{quote(idea, safe='')}/{pid}", b"")
        record = {"id": pid, "caption": caption or production.caption, "saved": datetime.now(UTC).isoformat(),
                  "idea": idea, "faces": faces, "created": production.meta.get("created"),
                  "seed": production.meta.get("seed"), "thumb": thumb}
        self.backend.put(f"gallery/{pid}.json", json.dumps(record, indent=2).encode())
        return production

    def gallery_ids(self, where: GalleryFilter = GalleryFilter()) -> list[str]:
        """The saved items that pass the filter, newest first: listings only (no object is read)."""
        ids = sorted((k[len("gallery/"):-len(".json")] for k in self.backend.list("gallery/") if k.endswith(".json")),
                     reverse=True)
        if where.face:
            keep = {k.rsplit("/", 1)[1] for k in self.backend.list(f"gallery-index/face/{Path(where.face).stem}/")}
            ids = [i for i in ids if i in keep]
        if where.idea:
            keep = {k.rsplit("/", 1)[1] for k in self.backend.list(f"gallery-index/idea/{quote(where.idea, safe='')}/")}
            ids = [i for i in ids if i in keep]
        if where.since or where.until:
            ids = [i for i in ids if (day := id_date(i)) and (where.since or day) <= day <= (where.until or day)]
        return ids

    def gallery_choices(self) -> tuple[dict[str, int], dict[str, int]]:
        """What the filters offer, from one listing: identity photos (faces/ key -> saved items with it) and ideas
        (idea -> saved items), most used first."""
        faces: dict[str, int] = {}
        ideas: dict[str, int] = {}
        for key in self.backend.list("gallery-index/"):
            _, kind, value, _pid = key.split("/", 3)
            if kind == "face":
                faces[f"faces/{value}.png"] = faces.get(f"faces/{value}.png", 0) + 1
            elif kind == "idea":
                ideas[unquote(value)] = ideas.get(unquote(value), 0) + 1
        by_use = lambda counts: dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))  # noqa: E731
        return by_use(faces), by_use(ideas)

    def gallery_record(self, pid: str) -> dict:
        """A saved item's record (caption, idea, identity photos, when, thumbnail key); read once per process."""
        if pid not in self._records:
            try:
                record = json.loads(self.backend.get(f"gallery/{pid}.json"))
            except KeyError:
                raise InvalidInput("production", f"{pid!r} is not in the gallery of {self.backend}") from None
            self._records[pid] = record
            while len(self._records) > 4 * ThumbnailCache.MEMORY_ITEMS:
                self._records.popitem(last=False)
        return self._records[pid]

    def thumbnail(self, pid: str) -> bytes:
        """A saved item's wall thumbnail: from the local cache, else the store's content-addressed copy, else made
        from the final image (a record saved before thumbnails existed) and kept in both."""
        record = self.gallery_record(pid)
        key = record.get("thumb")
        if key and (data := self.thumbs.get(Path(key).name)) is not None:
            return data
        try:
            data = self.backend.get(key) if key else None
        except KeyError:
            data = None
        if data is None:
            image = self.image(pid)
            key = thumbnail_key(image)
            if (data := self.thumbs.get(Path(key).name)) is None:
                data = make_thumbnail(image)
                if not self.backend.exists(key):
                    self.backend.put(key, data)
            self._records[pid] = {**record, "thumb": key}
        self.thumbs.put(Path(key).name, data)
        return data

    def gallery(self, page: int = 0, per_page: int = 12) -> tuple[list[tuple[Production, str]], int]:
        """One page of (production, caption), newest first, and the number of pages."""
        ids = self.gallery_ids()
        pages = max(1, -(-len(ids) // per_page))
        chosen = ids[page * per_page:(page + 1) * per_page]
        items = []
        for pid in chosen:
            items.append((self.production(pid), self.gallery_record(pid).get("caption", "")))
        return items, pages

    def save_curated(self, name: str, files: dict[str, bytes]) -> list[str]:
        keys = [f"curated/{name}/{file}" for file in files]
        for key, data in zip(keys, files.values()):
            self.backend.put(key, data)
        return keys


def open_store(settings=None) -> ProductionStore:
    """The store the settings name: an S3 bucket when PORTRAIT_STORE_S3_BUCKET is set, else a local directory."""
    from portrait.settings import get_settings

    settings = settings or get_settings()
    if settings.store_bucket:
        return ProductionStore(S3Backend(settings.store_bucket, settings.store_prefix, settings.store_endpoint))
    return ProductionStore(LocalBackend(settings.store_dir))
