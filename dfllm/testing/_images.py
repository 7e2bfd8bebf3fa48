"""Image parts of chat requests, as the fake provider reads, checks, records and answers them.

A chat message's ``content`` is a string or a list of parts (OpenAI's wire): ``{"type": "text",
"text": ...}`` and ``{"type": "image_url", "image_url": {"url": ..., "detail": ...}}``, the URL a
``data:image/...;base64,`` URL or an ``http(s)://`` one. The fake never fetches a URL. For each
image part it records an ``ImagePart``: the URL as sent, ``detail``, and for a data URL the
decoded bytes, their sha256, length, declared media type, the format their first bytes show,
the width and height and the named colour of its most common pixel (decoded with Pillow where
installed; without it, only a PNG's width and height, from its IHDR).

A part is refused (400, OpenAI's ``invalid_request_error``) as OpenAI would: a URL that is
neither a data URL nor http(s), base64 that does not decode, bytes that are not a PNG, JPEG,
GIF or WEBP image that decodes whole (a truncated file is refused where Pillow is installed),
a ``detail`` other than ``low``/``high``/``auto``, a data URL over ``max_image_bytes`` decoded,
or any image when the server was made with ``images=False`` (a text-only model).

Usage counts each image's tokens by OpenAI's arithmetic (``image_tokens``); the ``image``
responder answers what it saw (``describe_images``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_IMAGE_BYTES = 20 * 1024**2  # OpenAI's limit for one image
DETAILS = ("low", "high", "auto")

_DATA_URL = re.compile(r"data:([^;,]*)((?:;[^;,]*)*?)(;base64)?,(.*)", re.DOTALL)
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"GIF87a", "gif"), (b"GIF89a", "gif"))
# The nearest of these names a solid test image's colour (Pillow's names: "green" is (0, 128, 0)).
_COLOURS = {
    "black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128), "red": (255, 0, 0),
    "green": (0, 128, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0), "cyan": (0, 255, 255),
    "magenta": (255, 0, 255), "orange": (255, 165, 0), "purple": (128, 0, 128),
}


@dataclass(frozen=True)
class ImagePart:
    """One image part of a chat request, as the server received it."""

    message_index: int  # which message of ``messages`` carried it
    part_index: int  # its place in that message's content list
    url: str = field(repr=False)  # as sent: a data URL in full, or an http(s) URL
    detail: str | None  # as sent; None when the part had none (OpenAI reads that as "auto")
    media_type: str | None = None  # a data URL's declared type ("image/png")
    data: bytes | None = field(default=None, repr=False)  # a data URL's decoded bytes
    sha256: str | None = None  # of ``data``
    byte_length: int | None = None  # of ``data``
    format: str | None = None  # what ``data``'s first bytes are: "png", "jpeg", "gif", "webp" or None
    width: int | None = None
    height: int | None = None
    colour: str | None = None  # the named colour nearest its most common pixel ("red"); None without Pillow
    problem: str | None = None  # why OpenAI would refuse this part (None: it would not)

    @property
    def is_data_url(self) -> bool:
        return self.url.startswith("data:")

    def describe(self) -> str:
        """What the ``image`` responder says of this image: ``"4x3 red"``, or ``"url https://..."``
        (``"?x? unknown"`` where the fake could not tell, without Pillow)."""
        if not self.is_data_url:
            return f"url {self.url}"
        size = f"{self.width}x{self.height}" if self.width is not None else "?x?"
        return f"{size} {self.colour or 'unknown'}"

    def tokens(self) -> int:
        """OpenAI's image token arithmetic (gpt-4o): 85 at low detail (and for a URL the fake
        does not fetch); else 85 + 170 per 512-pixel tile of the image fitted in 2048 x 2048
        and then to a shortest side of at most 768."""
        if self.detail == "low" or self.width is None or self.height is None:
            return 85
        return image_tokens(self.width, self.height, self.detail or "auto")


def image_tokens(width: int, height: int, detail: str = "auto") -> int:
    """Prompt tokens of one image of this size at this detail (``auto`` counted as ``high``)."""
    if detail == "low":
        return 85
    scale = min(1.0, 2048 / max(width, height))
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


def content_text(content: Any) -> str:
    """A message content's text: the string, or a part list's text parts joined as written."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return "" if content is None else str(content)


def image_parts(body: Any, *, last_user_only: bool = False) -> tuple[ImagePart, ...]:
    """Every image part of a chat request's messages (or only of its last user message)."""
    messages = body.get("messages") if isinstance(body, Mapping) else None
    if not isinstance(messages, list):
        return ()
    numbered = [(i, m) for i, m in enumerate(messages) if isinstance(m, Mapping)]
    if last_user_only:
        numbered = [(i, m) for i, m in numbered if m.get("role") == "user"][-1:]
    return tuple(part for i, m in numbered for part in _parts_of(i, m.get("content")))


def refusal(parts: tuple[ImagePart, ...], *, model: str, images: bool,
            max_image_bytes: int) -> tuple[str, str, str] | None:
    """(message, param, code) of the 400 a request with these image parts gets, or None."""
    for part in parts:
        param = f"messages.[{part.message_index}].content.[{part.part_index}]"
        if not images:
            return (f"Invalid content type. image_url is only supported by certain models: image input is not "
                    f"supported by '{model}'.", f"{param}.type", "invalid_content_type")
        if part.problem is not None:
            return part.problem, f"{param}.image_url", "invalid_image"
        if part.byte_length is not None and part.byte_length > max_image_bytes:
            return (f"Image too large: {part.byte_length} bytes, the maximum is {max_image_bytes} bytes per "
                    "image.", f"{param}.image_url.url", "image_too_large")
    return None


def describe_images(body: Any) -> str:
    """The ``image`` responder: each image of the last user message described (``"4x3 red"``,
    ``"url https://..."``), joined by ``"; "``; ``"no image"`` when it has none."""
    parts = image_parts(body, last_user_only=True)
    return "; ".join(part.describe() for part in parts) if parts else "no image"


def _parts_of(message_index: int, content: Any) -> Iterator[ImagePart]:
    if not isinstance(content, list):
        return
    for part_index, part in enumerate(content):
        if isinstance(part, Mapping) and part.get("type") == "image_url":
            yield _read_part(message_index, part_index, part.get("image_url"))


def _read_part(message_index: int, part_index: int, image_url: Any) -> ImagePart:
    def refused(url: str, detail: str | None, problem: str) -> ImagePart:
        return ImagePart(message_index, part_index, url, detail, problem=problem)

    if not isinstance(image_url, Mapping) or not isinstance(image_url.get("url"), str):
        return refused("", None, "Invalid 'image_url': expected an object with a string 'url'.")
    url, detail = image_url["url"], image_url.get("detail")
    if detail is not None and detail not in DETAILS:
        return refused(url, str(detail), f"Invalid value: '{detail}'. Supported values are: 'low', 'high', and "
                       "'auto'.")
    if url.startswith(("http://", "https://")):
        return ImagePart(message_index, part_index, url, detail)
    match = _DATA_URL.fullmatch(url)
    if match is None or not match.group(3):
        return refused(url, detail, "Invalid image URL: expected a base64-encoded data URL with an image MIME type "
                       "(e.g. 'data:image/png;base64,...') or an http(s) URL.")
    try:
        data = base64.b64decode(match.group(4), validate=True)
    except (binascii.Error, ValueError):
        return refused(url, detail, "Invalid image URL: the data URL's base64 payload does not decode.")
    return _decoded(message_index, part_index, url, detail, match.group(1), data)


def _decoded(message_index: int, part_index: int, url: str, detail: str | None, media_type: str,
             data: bytes) -> ImagePart:
    kind = sniff(data)
    read = read_image(data) if kind is not None else None
    problem = None if read is not None else "You uploaded an unsupported image. Please make sure your image is valid."
    width, height, colour = read or (None, None, None)
    return ImagePart(message_index, part_index, url, detail, media_type, data, hashlib.sha256(data).hexdigest(),
                     len(data), kind, width, height, colour, problem)


def sniff(data: bytes) -> str | None:
    """The image format the first bytes show (PNG, JPEG, GIF, WEBP), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((name for magic, name in _MAGIC if data.startswith(magic)), None)


def read_image(data: bytes) -> tuple[int | None, int | None, str | None] | None:
    """(width, height, colour) of an image that decodes whole with Pillow, None for one that does
    not. Without Pillow (an optional extra) nothing is refused: a PNG's width and height are read
    from its IHDR, other formats' are None, and colours are None."""
    try:
        from PIL import Image
    except ImportError:
        return (*_png_size(data), None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                img.draft("RGB", (64, 64))  # a JPEG decodes at a fraction of its size
                small = img.convert("RGB")  # decodes it all: a truncated file fails here
        small.thumbnail((32, 32))
        colours = small.getcolors(32 * 32) or []
    except Exception:  # whatever Pillow cannot decode (truncated, a decompression bomb) is no image
        return None
    return int(width), int(height), _colour_name(colours)


def _png_size(data: bytes) -> tuple[int | None, int | None]:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR" or len(data) < 24:
        return None, None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _colour_name(colours: list[Any]) -> str | None:
    """The name nearest the most common of Pillow's ``getcolors`` ((count, (r, g, b)), ...)."""
    if not colours:
        return None
    pixel = max(colours)[1]
    if not isinstance(pixel, tuple):
        return None
    return min(_COLOURS, key=lambda name: sum((a - b) ** 2 for a, b in zip(_COLOURS[name], pixel, strict=True)))
