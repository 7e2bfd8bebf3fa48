"""Image cells: what a cell may hold, how it is named in the cache key, and how it is sent.

A cell holds an image as ``bytes`` (PNG, JPEG, WEBP or GIF, known by its first bytes, never by
a name), a local path (``str`` or ``pathlib.Path``), an ``http(s)://`` or ``data:`` URL (passed
to the provider as given: dfllm never fetches a URL), a Pillow image, or a list of these.

Two moments, so that a million paths never load a million images:

- **planning** (``identify``): each image is named for the cache key by the SHA-256 of its bytes
  (a file is read, hashed and let go), a URL by itself. The same picture at two paths is one
  request; an edited file at the same path is a new one. A problem (an unknown format, a missing
  file, a file over the limit, a path outside ``root``) is that row's error, before any request.
- **sending** (``load``): the bytes are read again, downscaled when ``max_side`` asks (Pillow),
  and become a ``data:`` URL.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_IMAGE_BYTES = 20 * 1024 * 1024  # OpenAI's limit on one image
_FORMATS = (  # (media type, test on the first bytes)
    ("image/png", lambda head: head.startswith(b"\x89PNG\r\n\x1a\n")),
    ("image/jpeg", lambda head: head.startswith(b"\xff\xd8\xff")),
    ("image/gif", lambda head: head[:6] in (b"GIF87a", b"GIF89a")),
    ("image/webp", lambda head: head[:4] == b"RIFF" and head[8:12] == b"WEBP"),
)
_DATA_URL_TYPES = frozenset(media for media, _ in _FORMATS)


class ImageProblem(ValueError):
    """Why a cell is not an image dfllm can send; the row's error, named with its row and column."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One image of one row, as planned: where its bytes are (``source``), its identity in the
    cache key (``digest``: the bytes' SHA-256, or the URL itself), and its media type."""

    source: bytes | Path | str  # bytes, a local file, or a URL to pass on as given
    digest: str
    media_type: str | None  # None for an http(s) URL (the provider reads it)


def media_type(head: bytes) -> str | None:
    """The image format its first bytes show, or None."""
    return next((media for media, test in _FORMATS if test(head)), None)


def cells(value: Any) -> Iterator[Any]:
    """The images of one cell: a list (or tuple, or an Arrow/NumPy array) holds several."""
    if isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and not isinstance(value, (bytes, str))):
        items = value.tolist() if hasattr(value, "tolist") else value
        yield from items
    else:
        yield value


def identify(value: Any, *, root: Path | None = None, max_bytes: int = MAX_IMAGE_BYTES,
             paths: bool = True) -> ImageRef:
    """The ``ImageRef`` of one image cell, reading a file only to hash it; ``ImageProblem`` if it
    cannot be sent. ``root``: local paths must resolve inside it (the command's ``--image-root``);
    ``paths=False``: no local path is read at all (the command without ``--image-root``)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return ImageRef(data, _digest(data), _checked_type(data, "the bytes", max_bytes))
    if _is_pillow(value):
        data = _pillow_png(value)
        return ImageRef(data, _digest(data), "image/png")
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        return ImageRef(value, "url:" + value, None)
    if isinstance(value, str) and value.startswith("data:"):
        data, kind = _data_url(value)
        return ImageRef(value, _digest(data), _checked_type(data, "the data: URL", max_bytes, kind))
    if isinstance(value, (str, Path)):
        if not paths and root is None:
            raise ImageProblem(f"{str(value)!r} is a local path, and the command reads image files only under "
                               "--image-root DIR: give it the folder the images are in")
        path = _local(Path(value), root)
        data = _read(path, max_bytes)
        return ImageRef(path, _digest(data), _checked_type(data, f"{str(path)!r}", max_bytes))
    raise ImageProblem(
        f"an image cell must be bytes, a path, an http(s):// or data: URL, or a Pillow image; got a "
        f"{type(value).__name__}")


def load(image: ImageRef, *, max_side: int | None = None) -> str:
    """The URL the provider is sent: an http(s) URL as given, else a ``data:`` URL of the bytes
    (read now), downscaled to ``max_side`` pixels on its longer side when asked."""
    if image.media_type is None:
        return str(image.source)
    if isinstance(image.source, str):  # a data: URL
        if max_side is None:
            return image.source
        data, media = _data_url(image.source)[0], image.media_type
    elif isinstance(image.source, Path):
        data, media = _read(image.source, MAX_IMAGE_BYTES), image.media_type
    else:
        data, media = image.source, image.media_type
    if max_side is not None:
        data, media = downscaled(data, max_side, media)
    return f"data:{media};base64,{base64.b64encode(data).decode('ascii')}"


def downscaled(data: bytes, max_side: int, media: str) -> tuple[bytes, str]:
    """``data`` with its longer side at most ``max_side`` pixels (unchanged when it already is)."""
    from PIL import Image  # the images extra: only downscaling and Pillow cells need it

    with Image.open(io.BytesIO(data)) as image:
        if max(image.size) <= max_side:
            return data, media
        image.thumbnail((max_side, max_side))
        out = io.BytesIO()
        keeps_alpha = image.mode in ("RGBA", "LA", "P")
        image.save(out, format="PNG" if keeps_alpha else "JPEG", quality=90)
    return out.getvalue(), "image/png" if keeps_alpha else "image/jpeg"


def size(data: bytes) -> tuple[int, int] | None:
    """The image's (width, height) in pixels, when Pillow can tell; None otherwise."""
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # an estimate goes on without it
        return None


def image_tokens(width: int | None, height: int | None, detail: str) -> int:
    """OpenAI's image token arithmetic (an estimate): ``low`` is 85 tokens; ``high`` (and ``auto``,
    taken as high) scales the image into 2048 x 2048, then its shorter side to 768, and costs 170
    per 512-pixel tile plus 85. An unknown size is taken as one tile's worth at high detail."""
    if detail == "low":
        return 85
    if not width or not height:
        return 170 * 4 + 85
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return 170 * math.ceil(w / 512) * math.ceil(h / 512) + 85


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _checked_type(data: bytes, what: str, max_bytes: int | None, declared: str | None = None) -> str:
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageProblem(f"{what} is {len(data) / 2**20:.1f} MiB, over the provider's "
                           f"{max_bytes / 2**20:g} MiB limit per image; downscale it or pass a smaller file")
    found = media_type(data[:16])
    if found is None:
        raise ImageProblem(f"{what} is not a PNG, JPEG, WEBP or GIF image (its first bytes are "
                           f"{data[:8]!r})")
    if declared is not None and declared != found:
        raise ImageProblem(f"{what} says {declared} but holds {found}")
    return found


def _data_url(url: str) -> tuple[bytes, str]:
    header, sep, payload = url.partition(",")
    kind = header[5:].split(";")[0]
    if not sep or ";base64" not in header or kind not in _DATA_URL_TYPES:
        raise ImageProblem("a data: URL must be data:image/(png|jpeg|gif|webp);base64,<data>")
    try:
        return base64.b64decode(payload, validate=True), kind
    except ValueError:
        raise ImageProblem("the data: URL's base64 payload is malformed") from None


def _local(path: Path, root: Path | None) -> Path:
    if root is None:
        return path.expanduser()
    resolved = (root / path).resolve() if not path.is_absolute() else path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ImageProblem(f"{str(path)!r} is outside --image-root {str(root)!r} (symlinks followed); "
                           "only files under it are read")
    return resolved


def _read(path: Path, max_bytes: int | None) -> bytes:
    """A regular file's bytes, never more than ``max_bytes`` of them read (a device such as /dev/zero,
    or a FIFO, is no image and would be read forever)."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ImageProblem(f"{str(path)!r} is not a regular file")
        if max_bytes is not None and info.st_size > max_bytes:
            raise ImageProblem(f"{str(path)!r} is {info.st_size / 2**20:.1f} MiB, over the provider's "
                               f"{max_bytes / 2**20:g} MiB limit per image")
        with open(path, "rb") as file:
            data = file.read() if max_bytes is None else file.read(max_bytes + 1)
    except OSError as exc:
        raise ImageProblem(f"{str(path)!r} cannot be read: {exc.strerror or exc}") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageProblem(f"{str(path)!r} grew past the provider's {max_bytes / 2**20:g} MiB limit per image")
    return data


def _is_pillow(value: Any) -> bool:
    return type(value).__module__.startswith("PIL.") and hasattr(value, "save") and hasattr(value, "size")


def _pillow_png(image: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


class ImageTable:
    """A plan's images: each rendered prompt holds a marker per image (``marker``), which a task's
    build turns back into an image part (``split``). A marker names the image by its digest, with
    a nonce drawn per plan so that no cell's text can pose as one; the cache key reads the prompt
    without the nonce (``keyed``), so a key is the same from one plan to the next."""

    def __init__(self, *, root: Path | None = None, max_bytes: int = MAX_IMAGE_BYTES, paths: bool = True) -> None:
        self.root, self.max_bytes, self.paths = root, max_bytes, paths
        self.nonce = secrets.token_hex(8)
        self._refs: dict[str, ImageRef] = {}
        self._marker = re.compile("\0" + self.nonce + r":([^\0]+)\0")

    def marker(self, value: Any) -> str:
        """The marker of one image cell (``ImageProblem`` when it cannot be sent)."""
        image = identify(value, root=self.root, max_bytes=self.max_bytes, paths=self.paths)
        self._refs.setdefault(image.digest, image)
        return f"\0{self.nonce}:{image.digest}\0"

    def keyed(self, prompt: str) -> str:
        """The prompt as its cache key reads it: each marker as its image's digest, without this plan's
        nonce; a cell's own NULs doubled, so no text can read as an image (a cell holding a marker's
        form would otherwise share the key of a row with that image)."""
        if "\0" not in prompt:
            return prompt
        pieces = self._marker.split(prompt)
        return "".join(f"\0image:{piece}\0" if i % 2 else piece.replace("\0", "\0\0") for i, piece in enumerate(pieces))

    def split(self, prompt: str) -> Iterator[str | ImageRef]:
        """The prompt's text and images, in order (empty text between images left out)."""
        pieces = self._marker.split(prompt)
        for i, piece in enumerate(pieces):
            if i % 2:
                yield self._refs[piece]
            elif piece:
                yield piece

    def forget(self) -> None:
        """Let go of the images planned so far (a stream's batch is sent and written: memory stays
        flat over a file of any size)."""
        self._refs.clear()

    def __len__(self) -> int:
        return len(self._refs)


def tokens_of(image: ImageRef, detail: str, max_side: int | None = None) -> int:
    """The image tokens ``image`` is estimated to cost at ``detail``, after downscaling to
    ``max_side``; its size is read from its header (Pillow opens lazily), never the whole file."""
    if detail == "low":
        return image_tokens(None, None, "low")
    dims = _dimensions(image)
    if dims is not None and max_side is not None and max(dims) > max_side:
        scale = max_side / max(dims)
        dims = (max(1, round(dims[0] * scale)), max(1, round(dims[1] * scale)))
    width, height = dims or (None, None)
    return image_tokens(width, height, detail)


def _dimensions(image: ImageRef) -> tuple[int, int] | None:
    if image.media_type is None:  # a URL: the provider reads it; its size is unknown here
        return None
    if isinstance(image.source, Path):
        try:
            from PIL import Image

            with Image.open(image.source) as opened:
                return opened.size
        except Exception:  # an estimate goes on without it
            return None
    data = _data_url(image.source)[0] if isinstance(image.source, str) else image.source
    return size(data)
