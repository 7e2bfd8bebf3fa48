"""Image cells: formats known by their bytes, identity by content (never by path), problems named
before any request, downscaling, and OpenAI's image token arithmetic."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dfllm.prompt.images import ImageProblem, identify, image_tokens, load, media_type


def png(width: int = 4, height: int = 3, colour: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


def decoded(url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


@pytest.mark.parametrize(("fmt", "media"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif"),
                                            ("WEBP", "image/webp")])
def test_formats_are_known_by_their_first_bytes(fmt: str, media: str) -> None:
    out = io.BytesIO()
    Image.new("RGB", (2, 2)).save(out, format=fmt)
    assert media_type(out.getvalue()[:16]) == media
    assert identify(out.getvalue()).media_type == media


def test_the_same_picture_at_two_paths_is_one_image_and_an_edited_file_a_new_one(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    (tmp_path / "b.png").write_bytes(png())
    first, second = identify(tmp_path / "a.png"), identify(str(tmp_path / "b.png"))
    assert first.digest == second.digest == identify(png()).digest
    (tmp_path / "a.png").write_bytes(png(colour="blue"))
    assert identify(tmp_path / "a.png").digest != first.digest
    assert str(tmp_path) not in first.digest  # the key never holds the path


def test_urls_are_passed_as_given_and_data_urls_checked() -> None:
    assert load(identify("https://example.com/cat.png")) == "https://example.com/cat.png"
    url = "data:image/png;base64," + base64.b64encode(png()).decode()
    assert load(identify(url)) == url
    with pytest.raises(ImageProblem, match="says image/jpeg but holds image/png"):
        identify(url.replace("image/png", "image/jpeg"))


@pytest.mark.parametrize(("cell", "reason"), [
    (b"GIF00 not an image", "not a PNG, JPEG, WEBP or GIF"),
    ("missing.png", "cannot be read"),
    (3.5, "got a float"),
    ("data:text/plain;base64,aGk=", "data: URL must be"),
])
def test_a_cell_that_is_not_an_image_is_a_named_problem(cell: object, reason: str, tmp_path: Path) -> None:
    with pytest.raises(ImageProblem, match=reason):
        identify(cell)


def test_an_image_over_the_limit_is_refused_without_reading_it(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(png() + b"\0" * 2000)
    with pytest.raises(ImageProblem, match="over the provider's"):
        identify(tmp_path / "big.png", max_bytes=1000)


def test_paths_must_stay_under_the_root_symlinks_followed(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "secret.png"
    root.mkdir()
    outside.write_bytes(png())
    (root / "ok.png").write_bytes(png())
    os.symlink(outside, root / "link.png")
    assert identify("ok.png", root=root).media_type == "image/png"
    for escaping in ("link.png", "../secret.png", str(outside)):
        with pytest.raises(ImageProblem, match="outside --image-root"):
            identify(escaping, root=root)


def test_a_pillow_image_is_sent_as_png() -> None:
    image = Image.new("RGB", (5, 6), "green")
    assert decoded(load(identify(image))).size == (5, 6)


@settings(deadline=None, max_examples=25)
@given(st.integers(1, 3000), st.integers(1, 3000), st.integers(16, 1024))
def test_downscaling_keeps_the_longer_side_within_max_side(width: int, height: int, side: int) -> None:
    out = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(out, format="PNG")
    sent = decoded(load(identify(out.getvalue()), max_side=side))
    assert max(sent.size) <= max(side, 1) and (max(width, height) > side or sent.size == (width, height))


@pytest.mark.parametrize(("width", "height", "detail", "tokens"), [
    (1024, 1024, "high", 765), (2048, 4096, "high", 1105), (4096, 8192, "low", 85), (512, 512, "high", 255),
])
def test_image_tokens_follow_openais_tile_arithmetic(width: int, height: int, detail: str, tokens: int) -> None:
    assert image_tokens(width, height, detail) == tokens


def test_an_image_placeholder_puts_the_cells_images_at_its_place_between_the_text() -> None:
    from dfllm.prompt.images import ImageRef, ImageTable
    from dfllm.prompt.template import Template, UnsendableRow

    template = Template("What is in {{image:photo}} and {{image:more}}? Caption: {{caption}}")
    assert template.fields == ("photo", "more", "caption") and template.image_fields == ("photo", "more")
    table = ImageTable()
    red, blue = png(colour="red"), png(colour="blue")
    columns: dict[str, list[Any]] = {"photo": [red, None, b"not an image", red], "more": [[blue, red], None, None, []],
               "caption": ["a", None, "c", "d"]}
    first, skipped, bad, last = template.render_columns(columns, 4, table)
    assert skipped is None  # every field null: the template's null rule
    assert isinstance(bad, UnsendableRow) and "column 'photo'" in bad.problem and "not a PNG" in bad.problem
    assert isinstance(first, str) and isinstance(last, str)
    parts = list(table.split(first))
    assert parts[0] == "What is in " and parts[2] == " and " and parts[-1] == "? Caption: a"
    images = [p for p in parts if isinstance(p, ImageRef)]
    assert [i.source for i in images] == [red, blue, red] and len(table) == 2  # one entry per picture
    assert table.nonce not in table.keyed(first)  # the cache key is the same from one plan to the next
    assert ImageTable().keyed(first) != table.keyed(first)  # another plan's markers are text to this one


def test_an_estimate_reads_an_images_size_from_its_header_and_counts_its_downscaled_tiles(tmp_path: Path) -> None:
    from dfllm.prompt.images import tokens_of

    (tmp_path / "wide.png").write_bytes(png(2048, 1024))
    image = identify(tmp_path / "wide.png")
    assert tokens_of(image, "high") == image_tokens(2048, 1024, "high") == 170 * 6 + 85  # 1536 x 768: 3 x 2 tiles
    assert tokens_of(image, "high", max_side=512) == image_tokens(512, 256, "high") == 255
    assert tokens_of(image, "low") == 85
    assert tokens_of(identify("https://example.com/a.png"), "high") == image_tokens(None, None, "high")


def test_a_device_or_a_fifo_is_no_image_and_is_never_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    for cell in ("/dev/zero", tmp_path / "pipe.png"):
        with pytest.raises(ImageProblem, match="not a regular file"):
            identify(cell)
