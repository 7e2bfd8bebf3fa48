"""The fake provider takes image parts as OpenAI does: it records what each request carried,
answers from the picture it received, refuses what a vision model (or a text-only one) refuses,
and counts image tokens by OpenAI's arithmetic."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import sys
from typing import Any

import aiohttp
import openai
import pytest
from PIL import Image

from dfllm.testing import BatchOptions, FakeProvider, FakeProviderApp, ImagePart, image_tokens, per_prompt, status
from dfllm.testing._images import read_image


def png(width: int, height: int, colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


def jpeg(width: int, height: int, colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="JPEG")
    return out.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def image_part(url: str, detail: str | None = "low") -> dict[str, Any]:
    image_url: dict[str, Any] = {"url": url}
    if detail is not None:
        image_url["detail"] = detail
    return {"type": "image_url", "image_url": image_url}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def chat(*parts: dict[str, Any], **body: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": list(parts)}], **body}


async def post_all(base_url: str, bodies: list[dict[str, Any]], path: str = "/chat/completions",
                   ) -> list[tuple[int, dict[str, Any]]]:
    async with aiohttp.ClientSession() as session:
        async def one(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            async with session.post(base_url + path, json=body) as response:
                return response.status, await response.json()
        return list(await asyncio.gather(*(one(body) for body in bodies)))


def post(base_url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return asyncio.run(post_all(base_url, [body]))[0]


# -- the SDK's wire, and the records ---------------------------------------------------------------
def test_the_sdk_sends_image_parts_and_the_fake_records_each_and_answers_from_it() -> None:
    red, blue = png(4, 3, "red"), jpeg(2, 5, "blue")
    with FakeProvider(responder="image", api_key="k") as fake:
        client = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
        completion = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is in "},
            {"type": "image_url", "image_url": {"url": data_url(red), "detail": "low"}},
            {"type": "text", "text": " and "},
            {"type": "image_url", "image_url": {"url": data_url(blue, "image/jpeg"), "detail": "high"}},
        ]}])
        client.close()
        assert completion.choices[0].message.content == "4x3 red; 2x5 blue"
        request = fake.chat_requests[0]
    assert request.prompt == "What is in  and "  # the text parts, joined as written
    first, second = request.images
    assert first == ImagePart(0, 1, data_url(red), "low", "image/png", red, hashlib.sha256(red).hexdigest(),
                              len(red), "png", 4, 3, "red")
    assert first.data == red and first.is_data_url and first.problem is None
    assert (second.detail, second.media_type, second.format, second.width, second.height, second.colour) == (
        "high", "image/jpeg", "jpeg", 2, 5, "blue")
    assert second.sha256 == hashlib.sha256(blue).hexdigest() and second.byte_length == len(blue)


def test_each_request_is_answered_from_its_own_picture() -> None:
    colours = ["red", "green", "blue", "white", "black", "yellow", "orange", "purple"]
    bodies = [chat(text_part(f"row {i}: "), image_part(data_url(png(i + 1, 2 * i + 1, colour))))
              for i, colour in enumerate(colours)]
    with FakeProvider(responder="image", latency_s=0.01) as fake:
        answers = asyncio.run(post_all(fake.base_url, bodies))
        by_prompt = {r.prompt: r.images[0] for r in fake.chat_requests}
    assert [a["choices"][0]["message"]["content"] for _, a in answers] == [
        f"{i + 1}x{2 * i + 1} {colour}" for i, colour in enumerate(colours)]
    assert {p: (i.width, i.colour) for p, i in by_prompt.items()} == {
        f"row {i}: ": (i + 1, colour) for i, colour in enumerate(colours)}


def test_a_url_is_never_fetched_and_a_request_without_images_says_so() -> None:
    url = "https://images.example.invalid/cat.png?sig=abc"
    with FakeProvider(responder="image") as fake:
        assert post(fake.base_url, chat(image_part(url, detail=None)))[1]["choices"][0]["message"]["content"] == (
            f"url {url}")
        plain = {"model": "m", "messages": [{"role": "user", "content": "just text"}]}
        assert post(fake.base_url, plain)[1]["choices"][0]["message"]["content"] == "no image"
        (part,) = fake.chat_requests[0].images
    assert (part.url, part.detail, part.data, part.sha256, part.width, part.is_data_url) == (
        url, None, None, None, None, False)
    assert fake.chat_requests[1].images == ()


def test_the_image_responder_answers_from_the_last_user_message_only() -> None:
    messages = [
        {"role": "system", "content": "Name the colour."},
        {"role": "user", "content": [image_part(data_url(png(1, 1, "green")))]},
        {"role": "assistant", "content": "1x1 green"},
        {"role": "user", "content": [text_part("and this? "), image_part(data_url(png(3, 3, "magenta")))]},
    ]
    with FakeProvider(responder="image") as fake:
        code, body = post(fake.base_url, {"model": "m", "messages": messages})
        assert [(p.message_index, p.colour) for p in fake.chat_requests[0].images] == [(1, "green"), (3, "magenta")]
    assert (code, body["choices"][0]["message"]["content"]) == (200, "3x3 magenta")


def test_a_schema_answer_carries_what_the_image_responder_saw() -> None:
    schema = {"type": "object", "properties": {"total": {"type": "string"}}, "required": ["total"]}
    body = chat(text_part("Read this receipt: "), image_part(data_url(png(6, 2, "white"))),
                response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
    with FakeProvider(responder="image") as fake:
        answer = post(fake.base_url, body)[1]["choices"][0]["message"]["content"]
    assert json.loads(answer) == {"total": "6x2 white"}


def test_scripts_and_responders_read_the_text_parts_of_a_part_list() -> None:
    with FakeProvider(responder="echo", script=per_prompt({"poison": [status(500)]})) as fake:
        failed = post(fake.base_url, chat(text_part("a poison "), image_part(data_url(png(1, 1, "red")))))
        echoed = post(fake.base_url, chat(text_part("hello "), image_part(data_url(png(1, 1, "red"))),
                                          text_part("world")))
    assert failed[0] == 500
    assert echoed[1]["choices"][0]["message"]["content"] == "hello world"  # no base64 in the prompt


# -- what a provider refuses -------------------------------------------------------------------------
def test_a_text_only_model_refuses_any_image_part_and_still_answers_text() -> None:
    with FakeProvider(images=False) as fake:
        code, body = post(fake.base_url, chat(text_part("see "), image_part(data_url(png(1, 1, "red")))))
        assert post(fake.base_url, {"model": "m", "messages": [{"role": "user", "content": "hi"}]})[0] == 200
        url_code, _ = post(fake.base_url, chat(image_part("https://example.invalid/a.png")))
        assert fake.app.status_counts == {400: 2, 200: 1}
    assert code == url_code == 400
    error = body["error"]
    assert "image input is not supported" in error["message"] and "gpt-4o-mini" in error["message"]
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error", "messages.[0].content.[1].type", "invalid_content_type")


def test_the_sdk_sees_a_text_only_models_refusal_as_a_bad_request() -> None:
    with FakeProvider(images=False) as fake:
        client = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
        with pytest.raises(openai.BadRequestError, match="image input is not supported"):
            client.chat.completions.create(model="gpt-3.5-turbo", messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url(png(1, 1, "red"))}}]}])
        client.close()


def test_an_image_over_max_image_bytes_is_refused_and_one_at_the_limit_is_not() -> None:
    small = png(2, 2, "red")
    with FakeProvider(max_image_bytes=len(small)) as fake:
        assert post(fake.base_url, chat(image_part(data_url(small))))[0] == 200
        code, body = post(fake.base_url, chat(image_part(data_url(png(64, 64, "red") + b"\0" * 10))))
    assert code == 400 and body["error"]["code"] == "image_too_large"
    assert f"the maximum is {len(small)} bytes" in body["error"]["message"]


def test_the_default_limit_is_openais_20_mb() -> None:
    assert FakeProviderApp().max_image_bytes == 20 * 1024**2


@pytest.mark.parametrize(("part", "message"), [
    (image_part(data_url(b"root:x:0:0:root:/root:/bin/bash\n")), "unsupported image"),  # /etc/passwd
    (image_part(data_url(png(8, 8, "red")[:40])), "unsupported image"),  # a truncated PNG
    (image_part("data:image/png;base64,%%%not-base64"), "does not decode"),
    (image_part("data:image/png,rawbytes"), "base64-encoded data URL"),
    (image_part("/home/user/photo.png"), "base64-encoded data URL"),  # a local path sent as a URL
    (image_part("file:///etc/passwd"), "base64-encoded data URL"),
    (image_part(data_url(png(1, 1, "red")), detail="ultra"), "Supported values are: 'low', 'high', and 'auto'"),
    ({"type": "image_url", "image_url": "https://example.invalid/a.png"}, "expected an object"),
])
def test_a_part_a_vision_model_cannot_read_is_a_400_naming_it(part: dict[str, Any], message: str) -> None:
    with FakeProvider(responder="image") as fake:
        code, body = post(fake.base_url, chat(text_part("look: "), part))
    assert code == 400 and message in body["error"]["message"]
    assert body["error"]["param"].startswith("messages.[0].content.[1]")


# -- tokens ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("width", "height", "detail", "tokens"), [
    (1024, 1024, "high", 765),  # OpenAI's examples
    (2048, 4096, "high", 1105),
    (4096, 8192, "low", 85),
    (512, 512, "auto", 255),
    (100, 100, "high", 255),  # never scaled up: one tile
])
def test_image_tokens_follow_openais_tile_arithmetic(width: int, height: int, detail: str, tokens: int) -> None:
    assert image_tokens(width, height, detail) == tokens


def test_usage_counts_each_images_tokens_beside_the_text() -> None:
    text = "x" * 40  # 10 of the fake's tokens
    with FakeProvider(prompt_cache_min_tokens=None) as fake:
        low = post(fake.base_url, chat(text_part(text), image_part(data_url(png(1024, 1024, "red")), "low")))
        high = post(fake.base_url, chat(text_part(text), image_part(data_url(png(1024, 1024, "red")), "high")))
        url = post(fake.base_url, chat(text_part(text), image_part("https://example.invalid/a.png", "high")))
    assert [r[1]["usage"]["prompt_tokens"] for r in (low, high, url)] == [10 + 85, 10 + 765, 10 + 85]


def test_the_prompt_cache_sees_the_same_picture_as_the_same_prefix() -> None:
    system = {"role": "system", "content": "Describe the product photo in one line. " * 5}

    def body(colour: str, text: str) -> dict[str, Any]:
        user = {"role": "user", "content": [image_part(data_url(png(2, 2, colour))), text_part(text * 40)]}
        return {"model": "m", "messages": [system, user]}

    with FakeProvider() as fake:
        cached = [post(fake.base_url, body(colour, text))[1]["usage"]["prompt_tokens_details"]["cached_tokens"]
                  for colour, text in [("red", "a"), ("red", "a"), ("blue", "a")]]
    assert cached[0] == 0 and cached[1] > cached[2] > 0  # the system prompt is shared; the blue image is not


# -- batch lines and the fallback without Pillow -------------------------------------------------------
def test_a_batch_line_with_an_image_is_answered_from_it_and_refused_by_a_text_only_model() -> None:
    lines = [{"custom_id": f"row-{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": chat(image_part(data_url(png(i + 1, 1, colour))))} for i, colour in enumerate(["red", "blue"])]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    for images, expected in ((True, {"row-0": (200, "1x1 red"), "row-1": (200, "2x1 blue")}),
                             (False, {"row-0": (400, None), "row-1": (400, None)})):
        with FakeProvider(responder="image", images=images, batch=BatchOptions(polls_to_complete=1)) as fake:
            client = openai.OpenAI(api_key="k", base_url=fake.base_url, max_retries=0)
            uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
            batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            for _ in range(3):  # validating -> in_progress -> finalizing -> completed at one poll each
                batch = client.batches.retrieve(batch.id)
            assert batch.status == "completed"
            file_id = batch.output_file_id if images else batch.error_file_id
            assert file_id is not None
            found = [json.loads(raw) for raw in client.files.content(file_id).text.splitlines()]
            client.close()
        answers = {line["custom_id"]: (line["response"]["status_code"],
                                       (line["response"]["body"].get("choices") or [{}])[0].get("message", {})
                                       .get("content")) for line in found}
        assert answers == expected


def test_without_pillow_a_pngs_size_is_read_from_its_header(monkeypatch: pytest.MonkeyPatch) -> None:
    wide, photo, small = png(7, 3, "red"), jpeg(7, 3, "red"), png(5, 2, "red")
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL now raises ImportError
    assert read_image(wide) == (7, 3, None)
    assert read_image(photo) == (None, None, None)  # sent on, its size unknown
    with FakeProvider(responder="image") as fake:
        answers = asyncio.run(post_all(fake.base_url, [chat(image_part(data_url(small))),
                                                       chat(image_part(data_url(photo, "image/jpeg")))]))
    assert [a["choices"][0]["message"]["content"] for _, a in answers] == ["5x2 unknown", "?x? unknown"]
