"""Files in and out, batch by batch, with pyarrow: Parquet, CSV and JSON Lines.

Memory holds one batch, whatever the file's size. ``-`` is stdin or stdout where the format
can stream: CSV and JSON Lines both ways, Parquet only out (reading Parquet starts at its
footer, so it needs a seekable file). Output to a path is written to a temporary file beside
it and renamed over the target only when complete: a killed run never leaves half a file.

CSV columns are read as text, exactly as written: a CSV has no types, and guessing them from
the first block fails on a later block that disagrees ("007" stays "007"). ``NA``, ``null``,
``None``, ``N/A``, ``nan``, ``#N/A`` are text like any other (pyarrow would read them as null,
and such a row would not be sent). Only an empty field (``a,,b``) is null; a quoted empty
field (``a,"",b``) is the empty string, which is how the CSV writer tells the two apart, so an
output read back gives the same cells.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
STDIO = "-"
_CSV_BLOCK_BYTES = 8 << 20


def format_problems(path: str, given: str | None, *, output: bool) -> tuple[str | None, list[str]]:
    """The file's format (from ``given`` or its extension) and every problem with that choice."""
    role = "output" if output else "input"
    names = sorted(set(FORMATS.values()))
    if given is not None:
        if given not in names:
            return None, [f"--{role}-format must be one of {', '.join(names)}, got {given!r}."]
        fmt: str | None = given
    elif path == STDIO:
        return None, [f"{role} '-' ({'stdout' if output else 'stdin'}) needs --{role}-format "
                      f"({', '.join(names)})."]
    else:
        fmt = FORMATS.get(Path(path).suffix.lower())
        if fmt is None:
            return None, [f"Cannot tell the {role} format of {path!r} from its extension; use "
                          f"{', '.join(sorted(FORMATS))} or pass --{role}-format."]
    if fmt == "parquet" and path == STDIO and not output:
        return fmt, ["Parquet cannot be read from stdin (its index is at the end of the file); "
                     "give a file path, or pipe CSV or JSON Lines."]
    if not output and path != STDIO and not Path(path).is_file():
        return fmt, [f"Input file {path!r} does not exist."]
    return fmt, []


@dataclass
class Source:
    """An input file opened for reading: its schema, its row count when known, its batches."""

    schema: pa.Schema
    total_rows: int | None
    _batches: Iterator[pa.RecordBatch]
    _handle: IO[bytes] | None = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        return self._batches

    def close(self) -> None:
        if self._handle is not None and self._handle is not sys.stdin.buffer:
            self._handle.close()


def open_source(path: str, fmt: str, batch_rows: int) -> Source:
    if fmt == "parquet":
        parquet = pq.ParquetFile(path)
        return Source(parquet.schema_arrow, parquet.metadata.num_rows,
                      parquet.iter_batches(batch_size=batch_rows), None)
    handle: IO[bytes] = sys.stdin.buffer if path == STDIO else open(path, "rb")  # noqa: SIM115 (closed by Source)
    try:
        if fmt == "csv":
            return _csv_source(handle, batch_rows)
        reader = pa_json.open_json(handle, read_options=pa_json.ReadOptions(block_size=_CSV_BLOCK_BYTES))
        return Source(reader.schema, None, _rebatched(reader, batch_rows), handle)
    except BaseException:
        if handle is not sys.stdin.buffer:
            handle.close()
        raise


def _csv_source(handle: IO[bytes], batch_rows: int) -> Source:
    header = handle.readline()
    if header.startswith(codecs.BOM_UTF8):
        header = header[len(codecs.BOM_UTF8):]
    names = next(csv.reader([header.decode("utf-8")]), [])
    if not names:
        raise ValueError("The CSV input has no header line; its first line must name the columns.")
    peek = getattr(handle, "peek", None)  # files and stdin are buffered readers
    if peek is not None and not peek(1):  # a header and no rows: an input of no rows, not an error
        schema = pa.schema([(name, pa.string()) for name in names])
        return Source(schema, 0, iter(()), handle)
    reader = pa_csv.open_csv(
        handle,
        read_options=pa_csv.ReadOptions(column_names=names, block_size=_CSV_BLOCK_BYTES),
        convert_options=pa_csv.ConvertOptions(column_types={n: pa.string() for n in names},
                                              null_values=[""], strings_can_be_null=True,
                                              quoted_strings_can_be_null=False),
    )
    return Source(reader.schema, None, _rebatched(reader, batch_rows), handle)


def _rebatched(reader: Any, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Blocks of bytes come back as batches of any row count: cut them to at most ``batch_rows``."""
    for block in reader:
        for start in range(0, block.num_rows, batch_rows):
            yield block.slice(start, batch_rows)


class Sink:
    """An output opened for writing; ``commit()`` makes it appear, ``abort()`` leaves no trace."""

    def __init__(self, path: str, fmt: str, schema: pa.Schema) -> None:
        nested = [f.name for f in schema if pa.types.is_nested(f.type)]
        if fmt == "csv" and nested:
            raise ValueError(f"CSV cannot hold the nested column(s) {nested}; write Parquet or JSON Lines.")
        self.path = path
        self._handle: IO[bytes] | None = None
        if path == STDIO:
            self._temp: Path | None = None
            out: Any = sys.stdout.buffer
        else:
            target = Path(path)
            # One fixed name: a re-run after a kill overwrites the leftover instead of adding another.
            self._temp = target.with_name(f".{target.name}.dfllm-part")
            out = str(self._temp)
        self._writer: Any = None
        if fmt == "parquet":
            self._writer = pq.ParquetWriter(out, schema)
        elif fmt == "csv":
            self._writer = pa_csv.CSVWriter(out, schema)
        else:
            self._handle = open(out, "wb") if isinstance(out, str) else out  # noqa: SIM115 (closed by _close)

    def write(self, batch: pa.RecordBatch) -> None:
        if self._handle is not None:
            lines = [json.dumps(row, ensure_ascii=False, default=str) for row in batch.to_pylist()]
            if lines:
                self._handle.write(("\n".join(lines) + "\n").encode("utf-8"))
        else:
            self._writer.write_batch(batch)

    def commit(self) -> None:
        self._close()
        if self._temp is None:
            return
        fd = os.open(self._temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._temp, self.path)
        _fsync_dir(Path(self.path).resolve().parent)

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # a half-written file may refuse to close; it goes anyway
            self._close()
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
        if self._handle is not None:
            self._handle.flush()
            if self._handle is not sys.stdout.buffer:
                self._handle.close()
            self._handle = None
        elif self._temp is None:
            sys.stdout.buffer.flush()


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); where directories cannot be opened, skip it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
