"""Image cells end to end: each row's picture reaches that row's request, against the fake provider on
127.0.0.1, which answers from the image it received ("4x3 red") and records every image part."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pandas as pd
import polars as pl
import pytest
from PIL import Image

import dfllm
from dfllm.testing import FakeProvider
from tests.conftest import KEY


def png(width: int, height: int, colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def fake() -> object:
    with FakeProvider(api_key=KEY, responder="image") as server:
        dfllm.create_engine("v", "openai", api_key=KEY, base_url=server.base_url)
        yield server


def test_each_rows_picture_reaches_its_request_once_and_as_sent(fake: FakeProvider, tmp_path: Path) -> None:
    red, blue = png(4, 3, "red"), png(5, 5, "blue")
    (tmp_path / "blue.png").write_bytes(blue)
    (tmp_path / "copy.png").write_bytes(blue)
    df = pd.DataFrame({"photo": [red, str(tmp_path / "blue.png"), red, tmp_path / "copy.png", None]})
    out = dfllm.predict(df, "v", "gpt-4o-mini", "What is this? {{image:photo}}", "seen", image_detail="low")
    assert out["seen"].tolist()[:4] == ["4x3 red", "5x5 blue", "4x3 red", "5x5 blue"] and pd.isna(out["seen"][4])
    sent = [image for request in fake.chat_requests for image in request.images]
    assert len(sent) == 2  # one request per picture: the same bytes at two paths are one
    assert {image.data for image in sent} == {red, blue} and {image.detail for image in sent} == {"low"}
    assert [request.prompt for request in fake.chat_requests] == ["What is this? "] * 2


def test_several_images_in_one_message_keep_their_places(fake: FakeProvider) -> None:
    df = pd.DataFrame({"a": [png(1, 1, "red")], "b": [[png(2, 2, "green"), png(3, 3, "blue")]]})
    out = dfllm.predict(df, "v", "m", "First {{image:a}} then {{image:b}}", "seen")
    assert out["seen"][0] == "1x1 red; 2x2 green; 3x3 blue"


def test_max_image_side_downscales_before_sending_and_enters_the_key(fake: FakeProvider) -> None:
    df = pd.DataFrame({"photo": [png(800, 400, "white")]})
    small = dfllm.predict(df, "v", "m", "{{image:photo}}", "seen", max_image_side=200)
    whole = dfllm.predict(df, "v", "m", "{{image:photo}}", "seen")
    assert small["seen"][0] == "200x100 white" and whole["seen"][0] == "800x400 white"
    assert len(fake.chat_requests) == 2  # another max_image_side is another request, not a cache hit


def test_a_cell_that_is_not_an_image_is_its_rows_error_before_any_request(fake: FakeProvider, tmp_path: Path) -> None:
    df = pd.DataFrame({"photo": [png(2, 2, "red"), b"%PDF-1.7", str(tmp_path / "missing.png")]})
    out = dfllm.predict(df, "v", "m", "{{image:photo}}", "seen", errors="null")
    assert out["seen"][0] == "2x2 red" and out["seen"][1:].isna().all()
    assert "column 'photo'" in out["seen_error"][1] and "not a PNG" in out["seen_error"][1]
    assert "cannot be read" in out["seen_error"][2]
    assert len(fake.chat_requests) == 1


def test_urls_are_passed_as_given_never_fetched(fake: FakeProvider) -> None:
    data_url = "data:image/png;base64," + base64.b64encode(png(3, 2, "yellow")).decode()
    df = pd.DataFrame({"photo": ["https://example.com/cat.png", data_url]})
    out = dfllm.predict(df, "v", "m", "{{image:photo}}", "seen")
    assert out["seen"].tolist() == ["url https://example.com/cat.png", "3x2 yellow"]


def test_polars_binary_columns_lazy_frames_and_verbs_take_images(fake: FakeProvider, tmp_path: Path) -> None:
    df = pl.DataFrame({"photo": [png(2, 1, "red"), png(1, 2, "green")]}, schema={"photo": pl.Binary})
    assert dfllm.predict(df, "v", "m", "{{image:photo}}", "seen")["seen"].to_list() == ["2x1 red", "1x2 green"]
    df.write_parquet(tmp_path / "in.parquet")
    lazy = pl.scan_parquet(tmp_path / "in.parquet").llm.predict("v", "m", "{{image:photo}}", "seen")  # type: ignore[attr-defined]
    assert lazy.collect()["seen"].to_list() == ["2x1 red", "1x2 green"]
    labelled = df.llm.classify("photo", ["red", "green"], engine="v", model="m", image=True)  # type: ignore[attr-defined]
    assert labelled["photo_label"].to_list() == ["red", "green"]


def test_an_engine_that_reads_text_only_is_refused_before_any_request() -> None:
    df = pd.DataFrame({"photo": [png(1, 1, "red")]})
    with pytest.raises(dfllm.ConfigurationError, match=r"takes none \(the bundled local model reads text only\)"):
        dfllm.predict(df, "local", None, "{{image:photo}}", "seen")


def test_an_estimate_counts_image_tokens_by_openais_tiles(fake: FakeProvider) -> None:
    df = pd.DataFrame({"photo": [png(1024, 1024, "red"), png(1024, 1024, "red"), png(10, 10, "blue")]})
    high = dfllm.estimate(df, "v", "m", "{{image:photo}}", "seen", image_detail="high")
    low = dfllm.estimate(df, "v", "m", "{{image:photo}}", "seen", image_detail="low")
    assert high.prompt_tokens - low.prompt_tokens == (765 - 85) + (255 - 85)
    assert fake.chat_requests == []


def test_a_text_cell_holding_a_markers_form_never_shares_an_image_rows_key(fake: FakeProvider) -> None:
    import hashlib

    red, blue = png(4, 3, "red"), png(4, 3, "blue")
    posing = "\0image:" + hashlib.sha256(red).hexdigest() + "\0"
    df = pd.DataFrame({"t": ["", posing], "i": [[red, blue], [blue]]})
    first = dfllm.predict(df, "v", "m", "{{t}}{{image:i}}", "seen")
    again = dfllm.predict(df, "v", "m", "{{t}}{{image:i}}", "seen")
    assert first["seen"].tolist() == again["seen"].tolist() == ["4x3 red; 4x3 blue", "4x3 blue"]
    assert len(fake.chat_requests) == 2  # two rows, two keys: then both from the cache
