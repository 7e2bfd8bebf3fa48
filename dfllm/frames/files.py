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
output read back gives the same cells. The header is one CSV record (a quoted name may hold a
line break); a header and no rows is an input of no rows.

JSON Lines values are read as written too. pyarrow's reader guesses a type per column and turns
``1`` then ``12345678901234567890`` into the floats ``1.0`` and ``1.2345678901234567e+19`` (the
prompt and the output changed), and stops at a field holding a number and a string. So each line
is parsed by ``json`` with numbers kept as their text, and each field's type is chosen from the
first block (8 MiB) of the file: int64 when every value is an integer that fits, float64 when
every value is a float whose text Python writes back unchanged (``0.5``, not ``1.10`` or ``1e5``),
bool, string, or a nested type; any other field of numbers is text as written (a JSON Lines output
writes them back as the same numbers), and a field mixing kinds (``1`` and ``"a"``) is text, its
non-strings as their JSON. A later line that its field's type cannot hold exactly stops the run
with the line's number. A string holding a lone surrogate (``"\\ud800"``: no column or request can
carry it) is refused naming its line and field: before any request when it is in the first block.
The cost: about 25 microseconds a line (100,000 lines of four fields in
2.4 s on a busy 2-core machine, against 0.06 s for pyarrow's guessing reader), small beside a
request per row.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import functools
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pa_csv
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
    _reader: pa.RecordBatchReader | None = None
    _native: pa.NativeFile | None = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        return self._batches

    def close(self) -> None:
        close_batches = getattr(self._batches, "close", None)  # a generator: its reader, if it opened one
        if close_batches is not None:
            close_batches()
        if self._reader is not None:
            self._reader.close()
        if self._native is not None:
            self._native.close()
        if self._handle is not None and self._handle is not sys.stdin.buffer:
            self._handle.close()


def read_again(path: str, fmt: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The file's batches read from its start, closed when done: a pass over it that a first
    pass (batch mode submitting its jobs) has already made. Not for standard input."""
    source = open_source(path, fmt, batch_rows)
    try:
        yield from source.batches()
    finally:
        source.close()


def open_source(path: str, fmt: str, batch_rows: int) -> Source:
    if fmt == "parquet":
        parquet = pq.ParquetFile(path)
        return Source(parquet.schema_arrow, parquet.metadata.num_rows,
                      parquet.iter_batches(batch_size=batch_rows), None)
    handle: IO[bytes] = sys.stdin.buffer if path == STDIO else open(path, "rb")  # noqa: SIM115 (closed by Source)
    try:
        if fmt == "csv":
            return _csv_source(handle, batch_rows)
        return _jsonl_source(handle, batch_rows)
    except BaseException:
        if handle is not sys.stdin.buffer:
            handle.close()
        raise


def _csv_source(handle: IO[bytes], batch_rows: int) -> Source:
    # The header is one CSV record, which a quoted name may spread over several lines.
    names = next(csv.reader(_header_lines(handle)), [])
    if not names:
        raise ValueError("The CSV input has no header line; its first line must name the columns.")
    peek = getattr(handle, "peek", None)  # files and stdin are buffered readers
    if peek is not None and not peek(1):  # a header and no rows: an input of no rows, not an error
        schema = pa.schema([(name, pa.string()) for name in names])
        return Source(schema, 0, iter(()), handle)
    # Pyarrow reads ahead on its own threads: from a file, natively, from where the header
    # ended. Threads still reading a Python file object when the interpreter exits abort the
    # process (3 runs in 12 of a command refused for a bad option, on a busy machine).
    rest: Any = handle
    if handle is not sys.stdin.buffer and stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
        rest = pa.OSFile(handle.name)
        rest.seek(handle.tell())
    open_reader = functools.partial(
        pa_csv.open_csv,
        rest,
        read_options=pa_csv.ReadOptions(column_names=names, block_size=_CSV_BLOCK_BYTES),
        convert_options=pa_csv.ConvertOptions(column_types={n: pa.string() for n in names},
                                              null_values=[""], strings_can_be_null=True,
                                              quoted_strings_can_be_null=False),
    )
    if rest is handle:
        # Standard input (or a pipe) stays a Python file object: its reader, and the threads, start
        # only when the run reads the first batch. Started at open, a command refused right after
        # (--mode batch from standard input) aborted at exit: once, in two passes of the
        # timing-sensitive tests beside two busy loops.
        schema = pa.schema([(name, pa.string()) for name in names])
        return Source(schema, None, _read_later(open_reader, batch_rows), handle)
    reader = open_reader()
    return Source(reader.schema, None, _rebatched(reader, batch_rows), handle, reader, rest)


def _read_later(open_reader: Callable[[], Any], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The batches of a reader opened when the first is asked for, closed with the iteration."""
    reader = open_reader()
    try:
        yield from _rebatched(reader, batch_rows)
    finally:
        reader.close()


def _header_lines(handle: IO[bytes]) -> Iterator[str]:
    """Lines of the CSV header, read only as far as the csv module asks (a BOM dropped): the rows
    after the header stay unread for pyarrow."""
    first = True
    while line := handle.readline():
        if first and line.startswith(codecs.BOM_UTF8):
            line = line[len(codecs.BOM_UTF8):]
        first = False
        yield line.decode("utf-8")


class _Written(str):
    """A JSON number as written: its text, parsed into a typed column only where that type holds it exactly."""


_INT64 = (-(2**63), 2**63 - 1)


def _jsonl_source(handle: IO[bytes], batch_rows: int) -> Source:
    """JSON Lines, each line parsed by ``json`` with numbers kept as written; the columns' types are
    chosen from the first block (see the module docstring) and hold for the whole file."""
    blocks = _jsonl_blocks(handle)
    first = next(blocks, [])
    schema = pa.schema([_jsonl_field(name, [row.get(name) for _, row in first])
                        for name in _field_names(first)])

    def batches() -> Iterator[pa.RecordBatch]:
        for block in _chain(first, blocks):
            for start in range(0, len(block), batch_rows):
                yield _jsonl_batch(schema, block[start:start + batch_rows])

    return Source(schema, None, batches(), handle)


def _chain(first: list[tuple[int, dict[str, Any]]],
           rest: Iterator[list[tuple[int, dict[str, Any]]]]) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    if first:
        yield first
    yield from rest


def _jsonl_blocks(handle: IO[bytes]) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    """(line number, object) for each non-blank line, in blocks of about ``_CSV_BLOCK_BYTES``."""
    block: list[tuple[int, dict[str, Any]]] = []
    size = 0
    for number, raw in enumerate(handle, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw, parse_int=_Written, parse_float=_Written, parse_constant=_Written)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"JSON Lines line {number} is not valid JSON: {type(exc).__name__}") from exc
        if not isinstance(row, dict):
            raise ValueError(f"JSON Lines line {number} is a JSON {type(row).__name__}, not an object.")
        if b"\\u" in raw or b"\xed" in raw:  # only an escape or CESU bytes decode to a lone surrogate
            _refuse_lone_surrogates(number, row)
        block.append((number, row))
        size += len(raw)
        if size >= _CSV_BLOCK_BYTES:
            yield block
            block, size = [], 0
    if block:
        yield block


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse_lone_surrogates(number: int, row: dict[str, Any]) -> None:
    """Refuse a line holding half of a UTF-16 pair: no Arrow column (and no request) can carry it, so the
    file is refused naming the place, rather than the run stopping later on a codec error."""
    for name, value in row.items():
        found = _first_surrogate(name) or _first_surrogate(value)
        if found is not None:
            shown = name.encode("ascii", "backslashreplace").decode()
            raise ValueError(
                f"JSON Lines line {number}: field {shown!r} holds a lone surrogate {found} (half of a UTF-16 "
                "pair, a \\ud800-\\udfff escape or its bytes alone), which is not valid Unicode and cannot be "
                "read or sent. Repair that line: write the character it stands for, or \\ufffd.")


def _first_surrogate(value: Any) -> str | None:
    """Where ``value`` (a parsed JSON value, however deep: walked without recursion) holds a lone surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            match = None if item.isascii() else _LONE_SURROGATE.search(item)
            if match is not None:
                return f"{match.group()!a} at position {match.start()}"
        elif isinstance(item, dict):
            stack += [*item, *item.values()]
        elif isinstance(item, list):
            stack += item
    return None


def _field_names(block: list[tuple[int, dict[str, Any]]]) -> list[str]:
    return list(dict.fromkeys(name for _, row in block for name in row))


def _kind(value: Any) -> str:
    if isinstance(value, _Written):
        if not any(c in value for c in ".eE") and value.lstrip("-").isdigit():
            return "int" if _INT64[0] <= int(value) <= _INT64[1] else "text"
        return "float" if value == repr(float(value)) else "text"  # 1.10, 1e5, 1e400, NaN: as written
    if isinstance(value, bool):
        return "bool"
    return "string" if isinstance(value, str) else "nested"


_TYPES = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "string": pa.string()}
_NUMERIC = frozenset({"int", "float", "text"})
# Field metadata, saying which cells a field takes and how a JSON Lines output writes them back.
_NUMBERS = {b"dfllm.json": b"numbers as written"}  # numbers only: written back as the same JSON numbers
_MIXED = {b"dfllm.json": b"mixed, as text"}  # anything: numbers, booleans, lists as their JSON text


def _jsonl_field(name: str, values: list[Any]) -> pa.Field:
    kinds = {_kind(v) for v in values if v is not None}
    if len(kinds) == 1 and (kind := next(iter(kinds))) in _TYPES:
        return pa.field(name, _TYPES[kind])
    if kinds == {"nested"}:
        return pa.field(name, pa.array([_plain(v) for v in values]).type)
    return pa.field(name, pa.string(), metadata=_NUMBERS if kinds <= _NUMERIC else _MIXED)


def _plain(value: Any) -> Any:
    """A parsed value with its written numbers as Python numbers (for nested columns)."""
    if isinstance(value, _Written):
        return int(value) if _kind(value) == "int" or value.lstrip("-").isdigit() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _as_written(value: Any) -> str | None:
    """A cell as its JSON text (a string as itself): ``1.0`` stays ``1.0``, ``true`` stays ``true``."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(_plain(value), ensure_ascii=False)


def _jsonl_batch(schema: pa.Schema, block: list[tuple[int, dict[str, Any]]]) -> pa.RecordBatch:
    unknown = next(((n, name) for n, row in block for name in row if name not in schema.names), None)
    if unknown is not None:
        raise ValueError(f"JSON Lines line {unknown[0]} has field {unknown[1]!r}, which the first "
                         f"{_CSV_BLOCK_BYTES >> 20} MiB of the file do not have; convert the file to Parquet.")
    columns = []
    for field in schema:
        values = [row.get(field.name) for _, row in block]
        misfit = _misfit(field, values)
        if misfit is not None:
            raise ValueError(
                f"JSON Lines line {block[misfit][0]}: field {field.name!r} holds a {_kind(values[misfit])} value "
                f"where the first {_CSV_BLOCK_BYTES >> 20} MiB of the file had {field.type} only; write that "
                "field in one type throughout, or convert the file to Parquet.")
        if field.metadata in (_NUMBERS, _MIXED):
            columns.append(pa.array([_as_written(v) for v in values], pa.string()))
        else:
            columns.append(pa.array([_plain(v) for v in values], field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _misfit(field: pa.Field, values: list[Any]) -> int | None:
    """The index of the first value its field cannot hold exactly, if any."""
    if field.metadata == _MIXED:
        return None
    if field.metadata == _NUMBERS:
        allowed: frozenset[str] = _NUMERIC
    else:
        allowed = frozenset(k for k, t in _TYPES.items() if t == field.type) or frozenset({"nested"})
    return next((i for i, v in enumerate(values) if v is not None and _kind(v) not in allowed), None)


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
            numbers = [f.name for f in batch.schema if f.metadata == _NUMBERS]
            lines = [_json_line(row, numbers) for row in batch.to_pylist()]
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


def _json_line(row: dict[str, Any], numbers: list[str]) -> str:
    """One output line; the cells of a field of numbers read as written go back as those numbers."""
    if not numbers:
        return json.dumps(row, ensure_ascii=False, default=str)
    return "{" + ", ".join(
        json.dumps(k, ensure_ascii=False) + ": "
        + (("null" if v is None else v) if k in numbers else json.dumps(v, ensure_ascii=False, default=str))
        for k, v in row.items()) + "}"


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
