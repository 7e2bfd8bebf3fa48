"""``dfllm predict`` with image cells: Parquet binary columns, and path columns read only under
--image-root; a real subprocess against the fake provider on 127.0.0.1."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from dfllm.testing import FakeProvider

from .test_cli import dfllm_cmd, run


def png(colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(out, format="PNG")
    return out.getvalue()


def args(fake: FakeProvider, src: Path, dst: Path, template: str, *more: str) -> list[str]:
    return dfllm_cmd("predict", str(src), str(dst), "--engine", "openai", "--base-url", fake.base_url, "--model", "m",
                     "--template", template, "--target", "seen", "--no-progress", *more)


def test_a_binary_column_is_sent_as_images(tmp_path: Path) -> None:
    pq.write_table(pa.table({"photo": pa.array([png("red"), png("blue")], pa.binary())}), tmp_path / "in.parquet")
    with FakeProvider(responder="image") as fake:
        done = run(args(fake, tmp_path / "in.parquet", tmp_path / "out.parquet", "{{image:photo}}"), tmp_path)
    assert done.returncode == 0, done.stderr
    assert pq.read_table(tmp_path / "out.parquet").column("seen").to_pylist() == ["4x4 red", "4x4 blue"]


def test_path_cells_are_read_only_under_the_image_root_symlinks_that_leave_it_refused(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    (root / "red.png").write_bytes(png("red"))
    (tmp_path / "secret.png").write_bytes(png("green"))
    os.symlink(tmp_path / "secret.png", root / "link.png")
    paths = ["red.png", "link.png", str(tmp_path / "secret.png"), "../secret.png"]
    pq.write_table(pa.table({"photo": paths}), tmp_path / "in.parquet")
    with FakeProvider(responder="image") as fake:
        rooted = run(args(fake, tmp_path / "in.parquet", tmp_path / "out.parquet", "{{image:photo}}",
                          "--image-root", str(root)), tmp_path)
        unrooted = run(args(fake, tmp_path / "in.parquet", tmp_path / "none.parquet", "{{image:photo}}"), tmp_path)
        sent = [image.colour for request in fake.chat_requests for image in request.images]
    assert rooted.returncode == 1 and unrooted.returncode == 1  # rows failed; the others answered
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert out[0]["seen"] == "4x4 red" and all(row["seen"] is None for row in out[1:])
    assert all("outside --image-root" in row["seen_error"] for row in out[1:])
    refused = pq.read_table(tmp_path / "none.parquet").to_pylist()
    assert all(row["seen"] is None and "--image-root DIR" in row["seen_error"] for row in refused)
    assert sent == ["red"]  # the green secret was never sent


def test_a_dry_run_counts_image_tokens(tmp_path: Path) -> None:
    pq.write_table(pa.table({"photo": pa.array([png("red")], pa.binary())}), tmp_path / "in.parquet")
    with FakeProvider(responder="image") as fake:
        low = run(args(fake, tmp_path / "in.parquet", tmp_path / "o.parquet", "{{image:photo}}", "--dry-run",
                       "--image-detail", "low"), tmp_path)
        assert fake.chat_requests == []
    assert low.returncode == 0, low.stderr
    tokens = next(line for line in low.stdout.splitlines() if line.startswith("prompt tokens"))
    assert int(tokens.split()[2].replace(",", "")) >= 85


def test_dfllm_embed_writes_a_vector_column_each_text_once(tmp_path: Path) -> None:
    from dfllm.testing import EmbeddingOptions

    pq.write_table(pa.table({"name": ["a", "b", "a", None]}), tmp_path / "in.parquet")
    with FakeProvider(embeddings=EmbeddingOptions(dimension=6)) as fake:
        done = run(dfllm_cmd("embed", str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"), "--engine", "openai",
                             "--base-url", fake.base_url, "--model", "m", "--template", "name", "--target", "vec",
                             "--no-progress", "--batch-rows", "2"), tmp_path)
        inputs = [text for r in fake.embedding_requests for text in r.inputs]
    assert done.returncode == 0, done.stderr
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.field("vec").type == pa.list_(pa.float32(), 6)
    assert [v is None for v in table.column("vec").to_pylist()] == [False, False, False, True]
    assert sorted(inputs) == ["a", "b"]
