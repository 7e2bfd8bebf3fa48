"""The ``dfllm`` command end to end: a real subprocess against the fake provider on 127.0.0.1."""

from __future__ import annotations

import json
import os
import random
import signal
import string
import subprocess
import sys
import time
from collections.abc import Generator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from dfllm import ConfigurationError, create_engine
from dfllm.cli import PARSERS, build_parser, main
from dfllm.config.options import OPTIONS
from dfllm.runtime.cost import usd
from dfllm.testing import DEFAULT_MODELS, FakeProvider, ok

from .conftest import KEY

ROOT = Path(__file__).resolve().parent.parent


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.update(PYTHONPATH=str(ROOT), DFLLM_CACHE_DIR=str(tmp_path / "cache"), OPENAI_API_KEY=KEY, **extra)
    return env


def dfllm_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "dfllm", *args]


def predict_args(fake: FakeProvider, src: str, dst: str, *more: str) -> list[str]:
    return dfllm_cmd("predict", src, dst, "--engine", "openai", "--base-url", fake.base_url, "--model", "m",
                     "--template", "say {{t}}", "--target", "y", *more)


def run(cmd: list[str], tmp_path: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    done: subprocess.CompletedProcess[str] = subprocess.run(
        cmd, env=env_for(tmp_path), capture_output=True, text=True, timeout=120, **kwargs)  # type: ignore[call-overload]
    return done


def table(rows: int) -> pa.Table:
    # Every 10th row repeats an earlier prompt, every 50th has no text: nulls and duplicates keep their places.
    texts = [None if i % 50 == 7 else f"row {i % 100 if i % 10 == 3 else i}" for i in range(rows)]
    return pa.table({"id": list(range(rows)), "t": texts})


def write(t: pa.Table, path: Path) -> None:
    if path.suffix == ".parquet":
        pq.write_table(t, path)
    elif path.suffix == ".csv":
        pa_csv.write_csv(t, path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in t.to_pylist()))


def read(path: Path) -> list[dict[str, object]]:
    if path.suffix == ".parquet":
        rows: list[dict[str, object]] = pq.read_table(path).to_pylist()
    elif path.suffix == ".csv":
        convert = pa_csv.ConvertOptions(strings_can_be_null=True, column_types={"id": pa.int64()})
        rows = pa_csv.read_csv(path, convert_options=convert).to_pylist()
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        row["id"] = int(row["id"])  # type: ignore[call-overload]  # CSV input is read as text
    return rows


def expected(t: pa.Table) -> list[dict[str, object]]:
    return [{**r, "y": None if r["t"] is None else f"say {r['t']}", "y_error": None} for r in t.to_pylist()]


@pytest.mark.parametrize(("src", "dst"), [("in.parquet", "out.csv"), ("in.csv", "out.jsonl"),
                                          ("in.jsonl", "out.parquet")])
def test_each_format_in_and_out_keeps_rows_order_and_columns(tmp_path: Path, src: str, dst: str) -> None:
    t = table(700)
    write(t, tmp_path / src)
    with FakeProvider(responder="echo") as fake:
        done = run(predict_args(fake, str(tmp_path / src), str(tmp_path / dst), "--batch-rows", "128"), tmp_path)
        sent = len(fake.chat_requests)
    assert done.returncode == 0, done.stderr
    rows = read(tmp_path / dst)
    assert [list(r) for r in rows[:1]] == [["id", "t", "y", "y_error"]]
    assert rows == expected(t)
    # A prompt goes once, even when it repeats in a later batch.
    unique = len({r["t"] for r in t.to_pylist() if r["t"] is not None})
    assert sent == unique
    assert "700 rows" in done.stderr and "0 failed rows" in done.stderr
    assert not list(tmp_path.glob(".*dfllm-part"))


def test_stdin_to_stdout(tmp_path: Path) -> None:
    t = table(50)
    write(t, tmp_path / "in.csv")
    with FakeProvider(responder="echo") as fake:
        done = run(predict_args(fake, "-", "-", "--input-format", "csv", "--output-format", "jsonl"), tmp_path,
                   input=(tmp_path / "in.csv").read_text())
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(int(r["id"]), r["y"]) for r in rows] == [(r["id"], r["y"]) for r in expected(t)]


def test_kill_9_mid_file_then_rerun_sends_only_missing_rows(tmp_path: Path) -> None:
    rows, concurrency = 3000, 16
    t = pa.table({"id": list(range(rows)), "t": [f"row {i}" for i in range(rows)]})
    pq.write_table(t, tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    args = ("--batch-rows", "400", "--concurrency", str(concurrency), "--no-progress")
    with FakeProvider(latency_s=0.01, responder="echo") as fake:
        child = subprocess.Popen(predict_args(fake, str(tmp_path / "in.parquet"), str(out), *args),
                                 env=env_for(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(fake.chat_requests) < rows // 2:
            assert time.monotonic() < deadline and child.poll() is None, "the command never got half way"
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert not out.exists()  # never half-written: the output appears only when complete
        first = len(fake.chat_requests)
        done = run(predict_args(fake, str(tmp_path / "in.parquet"), str(out), *args), tmp_path)
        resent = len(fake.chat_requests) - first
    assert done.returncode == 0, done.stderr
    assert pq.read_table(out).column("y").to_pylist() == [f"say row {i}" for i in range(rows)]
    assert pq.read_table(out).column("id").to_pylist() == list(range(rows))
    # Only rows without a committed answer go again: what was in flight or not yet flushed at the kill.
    assert rows - first <= resent <= rows - first + concurrency + 200
    assert resent < rows // 2 + concurrency + 200


def test_failed_rows_exit_1_with_their_errors_in_the_error_column(tmp_path: Path) -> None:
    pq.write_table(pa.table({"t": ["yes", "maybe", "no", "yes"]}), tmp_path / "in.parquet")
    with FakeProvider(responder="echo") as fake:
        done = run(dfllm_cmd("predict", str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"),
                             "--engine", "openai", "--base-url", fake.base_url, "--model", "m",
                             "--template", "{{t}}", "--target", "y", "--choices", "yes,no"), tmp_path)
    assert done.returncode == 1, done.stderr
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["y"] for r in out] == ["yes", None, "no", "yes"]
    assert [r["y_error"] is not None for r in out] == [False, True, False, False]
    assert "LabelError" in str(out[1]["y_error"]) and "1 failed rows" in done.stderr


def test_an_answer_nested_thousands_deep_is_a_row_error_exit_1_with_the_output_written(tmp_path: Path) -> None:
    pq.write_table(pa.table({"t": ["a", "deep", "c"]}), tmp_path / "in.parquet")
    schema = json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}})
    deep = '{"n": ' + "[" * 3000 + "]" * 3000 + "}"
    with FakeProvider(script=lambda request: ok(deep) if "deep" in request.prompt else None) as fake:
        args = predict_args(fake, str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet"), "--schema", schema,
                            "--max-repairs", "0")
        done = run(args, tmp_path)
        again = run(args, tmp_path)
        prompts = [r.prompt for r in fake.chat_requests]
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "1 failed rows" in done.stderr
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["y_n"] is None for r in out] == [False, True, False]
    assert "SchemaError" in str(out[1]["y_error"]) and "nested too deeply" in str(out[1]["y_error"])
    # The re-run exits the same way, asking only for the row that failed: the others were cached.
    assert again.returncode == 1, again.stderr
    assert sorted(prompts) == ["say a", "say c", "say deep", "say deep"]


def test_a_schema_gives_typed_parquet_columns_or_one_struct_column(tmp_path: Path) -> None:
    pq.write_table(pa.table({"t": ["a", "b"]}), tmp_path / "in.parquet")
    schema = json.dumps({"type": "object", "properties": {"n": {"type": "integer"}, "tag": {"type": "string"}}})
    with FakeProvider(responder="echo") as fake:
        for layout in ("fields", "struct"):
            done = run(predict_args(fake, str(tmp_path / "in.parquet"), str(tmp_path / f"{layout}.parquet"),
                                    "--schema", schema, "--schema-columns", layout), tmp_path)
            assert done.returncode == 0, done.stderr
    fields = pq.read_table(tmp_path / "fields.parquet")
    assert (fields.schema.field("y_n").type, fields.schema.field("y_tag").type) == (pa.int64(), pa.string())
    packed = pq.read_table(tmp_path / "struct.parquet")
    assert packed.column_names == ["t", "y", "y_error"]
    assert packed.schema.field("y").type == pa.struct([("n", pa.int64()), ("tag", pa.string())])
    assert [r["y"] for r in packed.to_pylist()] == [{"n": n, "tag": tag} for n, tag in
                                                    zip(fields["y_n"].to_pylist(), fields["y_tag"].to_pylist(),
                                                        strict=True)]


def test_configuration_errors_exit_2_all_at_once_before_any_request(tmp_path: Path) -> None:
    pq.write_table(pa.table({"t": ["a"]}), tmp_path / "in.parquet")
    with FakeProvider() as fake:
        done = run(dfllm_cmd("predict", str(tmp_path / "in.parquet"), str(tmp_path / "out.xlsx"), "--engine",
                             "openai", "--base-url", fake.base_url, "--template", "{{text}}", "--target", "t",
                             "--rpm", "fast", "--concurrency", "0", "--temperature", "9"), tmp_path)
        sent = len(fake.requests)
    assert done.returncode == 2
    for needle in ("out.xlsx", "--rpm 'fast'", "concurrency must be a positive integer", "temperature",
                   "column 'text'", "overwrite existing column(s) ['t']"):
        assert needle in done.stderr
    assert sent == 0
    assert not (tmp_path / "out.xlsx").exists()


def test_a_key_on_the_command_line_is_warned_about_and_never_echoed(tmp_path: Path) -> None:
    pq.write_table(pa.table({"t": ["a"]}), tmp_path / "in.parquet")
    secret = "sk-cli-secret-0123456789"
    with FakeProvider(responder="echo", api_key=secret) as fake:
        env = env_for(tmp_path)
        del env["OPENAI_API_KEY"]
        missing = subprocess.run(predict_args(fake, str(tmp_path / "in.parquet"), str(tmp_path / "o.parquet")),
                                 env=env, capture_output=True, text=True, timeout=120)
        done = subprocess.run(predict_args(fake, str(tmp_path / "in.parquet"), str(tmp_path / "o.parquet"),
                                           "--param", f"api_key={secret}"),
                              env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "OPENAI_API_KEY" in missing.stderr
    assert done.returncode == 0, done.stderr
    assert "shell history" in done.stderr and "OPENAI_API_KEY" in done.stderr
    assert secret not in done.stderr + done.stdout + missing.stderr


def test_a_refused_key_stops_the_run_exit_3_and_writes_nothing(tmp_path: Path) -> None:
    pq.write_table(pa.table({"t": [f"r{i}" for i in range(40)]}), tmp_path / "in.parquet")
    with FakeProvider(api_key="another-key") as fake:
        done = run(predict_args(fake, str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet")), tmp_path)
    assert done.returncode == 3, done.stderr
    assert "the run stopped" in done.stderr and "HTTP 401" in done.stderr
    assert KEY not in done.stderr
    assert list(tmp_path.glob("*out.parquet*")) == []


def test_dry_run_sends_nothing_and_counts_the_cache(tmp_path: Path) -> None:
    t = table(300)
    pq.write_table(t, tmp_path / "in.parquet")
    unique = len({r["t"] for r in t.to_pylist() if r["t"] is not None})
    src, dst = str(tmp_path / "in.parquet"), str(tmp_path / "out.parquet")
    with FakeProvider(responder="echo") as fake:
        before = run(predict_args(fake, src, dst, "--dry-run", "--price-prompt", "1", "--price-completion", "2",
                                  "--completion-tokens", "3"), tmp_path)
        assert len(fake.requests) == 0
        assert run(predict_args(fake, src, dst), tmp_path).returncode == 0
        sent = len(fake.requests)
        after = run(predict_args(fake, src, str(tmp_path / "other.parquet"), "--dry-run"), tmp_path)
        assert len(fake.requests) == sent
    assert before.returncode == 0 and after.returncode == 0
    assert f"requests to send     {unique:,}" in before.stdout
    assert f"completion tokens    {3 * unique:,}" in before.stdout
    assert "4 characters a token" in before.stdout
    # 1 and 2 USD per million prompt and completion tokens: online, and half in a batch job.
    tokens = [int(line.split()[2].replace(",", "")) for line in before.stdout.splitlines()
              if line.startswith(("prompt tokens", "completion tokens"))]
    online = (tokens[0] * 1 + tokens[1] * 2) / 1e6
    assert f"cost                 online {usd(online)}, batch {usd(online / 2)}" in before.stdout
    assert "cost" not in after.stdout  # no prices, no cost
    assert f"cache hits           {unique:,}" in after.stdout and "requests to send     0" in after.stdout
    assert not (tmp_path / "other.parquet").exists()


def test_engines_and_models(tmp_path: Path) -> None:
    engines = run(dfllm_cmd("engines"), tmp_path)
    assert engines.returncode == 0
    assert "openai" in engines.stdout and "OPENAI_API_KEY" in engines.stdout and "PORTKEY_API_KEY" in engines.stdout
    with FakeProvider() as fake:
        models = run(dfllm_cmd("models", "--engine", "openai_compatible", "--base-url", fake.base_url), tmp_path)
    assert models.returncode == 0, models.stderr
    assert models.stdout.split() == list(DEFAULT_MODELS)


def test_every_option_is_a_flag_with_its_doc_and_a_parser() -> None:
    predict = build_parser()._subparsers._group_actions[0].choices["predict"]  # type: ignore[index, union-attr]
    flags = {a.dest: a for a in predict._actions}
    for option in OPTIONS:
        action = flags[f"option_{option.name}"]
        assert f"--{option.name.replace('_', '-')}" in action.option_strings
        assert option.doc in (action.help or "").replace("%%", "%")
        assert option.parse is not None or option.type in PARSERS, f"no parser for {option.name}'s type"


def test_flag_values_are_parsed_to_the_options_types(tmp_path: Path) -> None:
    from dfllm.cli import option_values

    args = build_parser().parse_args(
        ["predict", "a.csv", "b.csv", "--engine", "openai", "--template", "x", "--target", "y",
         "--concurrency", "8", "--rpm", "90.5", "--choices", "a, b", "--usage-columns", "--cache", "false",
         "--stop", '["x", "y"]', "--logit-bias", '{"1": 2}'])
    problems: list[str] = []
    values = option_values(args, problems)
    assert problems == []
    assert values == {"concurrency": 8, "rpm": 90.5, "choices": ["a", "b"], "usage_columns": True, "cache": False,
                      "stop": ["x", "y"], "logit_bias": {"1": 2}, "errors": "null"}


def test_a_self_hosted_portkey_gateway_needs_no_key_and_bad_estimate_assumptions_are_listed(
        tmp_path: Path) -> None:
    pq.write_table(pa.table({"t": ["a"]}), tmp_path / "in.parquet")
    with FakeProvider() as fake:
        args = [sys.executable, "-m", "dfllm", "predict", str(tmp_path / "in.parquet"), str(tmp_path / "o.parquet"),
                "--engine", "portkey", "--base-url", fake.base_url, "--model", "m", "--template", "{{t}}",
                "--target", "y", "--dry-run", "--latency-s", "0", "--price-prompt", "-1"]
        done = run(args, tmp_path)
        assert fake.requests == []
    assert done.returncode == 2, done.stderr
    assert "--latency-s must be a positive number" in done.stderr and "price_prompt must be a price" in done.stderr
    assert "API key" not in done.stderr


def test_a_malformed_param_is_named_without_echoing_what_may_be_a_key(tmp_path: Path) -> None:
    pq.write_table(pa.table({"t": ["a"]}), tmp_path / "in.parquet")
    secret = "sk-pasted-0123456789abcdef"
    with FakeProvider() as fake:
        done = run(predict_args(fake, str(tmp_path / "in.parquet"), str(tmp_path / "o.parquet"),
                                "--param", f"api_key:{secret}", "--param", "=" + secret, "--concurrency", "0"),
                   tmp_path)
        sent = len(fake.requests)
    assert done.returncode == 2, done.stderr
    assert secret not in done.stderr + done.stdout and secret[3:12] not in done.stderr
    assert "--param number 1 of 2 has no NAME= before its value (34 characters, not shown" in done.stderr
    assert "Put '=' between the name and the value, not ':'" in done.stderr
    assert "--param number 2 of 2 has no NAME=" in done.stderr and "--param NAME=VALUE" in done.stderr
    assert "concurrency must be a positive integer" in done.stderr  # listed with the rest
    assert sent == 0


def test_a_param_whose_name_may_be_a_key_is_named_by_place_an_ordinary_one_by_name(tmp_path: Path) -> None:
    pq.write_table(pa.table({"t": ["a"]}), tmp_path / "in.parquet")
    colon = "QUJDREVGR0hJSktMTU5PUA"
    pasted = "sk-proj-ABCdef1234567890"
    with FakeProvider() as fake:
        done = run(predict_args(fake, str(tmp_path / "in.parquet"), str(tmp_path / "o.parquet"),
                                "--param", f"api_key:{colon}==", "--param", f"{pasted}=", "--param", "max_tokn=5",
                                "--param", f"{colon}=1"),
                   tmp_path)
        sent = len(fake.requests)
    assert done.returncode == 2 and sent == 0, done.stderr
    assert colon not in done.stderr + done.stdout and pasted not in done.stderr and pasted[8:] not in done.stderr
    assert "--param number 1 has an unknown name (30 characters, not shown: it may hold a key)" in done.stderr
    assert "Put '=' between the name and the value, not ':'" in done.stderr
    assert "--param number 2 has an unknown name (24 characters, not shown" in done.stderr
    assert "--param number 4 has an unknown name (22 characters, not shown" in done.stderr
    assert "Unknown option 'max_tokn'. Did you mean 'max_tokens'?" in done.stderr  # a plain name is quoted


def test_create_engine_never_quotes_a_parameter_name_that_may_be_a_key() -> None:
    with pytest.raises(ConfigurationError) as info:
        create_engine("e", "openai", api_key="k", **{"api_key:sk-proj-ABCdef1234567890": "x", "max_tokn": 5})
    assert "sk-proj" not in str(info.value) and "ABCdef1234567890" not in str(info.value)
    assert "A parameter has an unknown name (32 characters, not shown" in str(info.value)
    assert "Unknown option 'max_tokn'" in str(info.value)


def test_csv_cells_are_read_as_written_only_an_empty_field_is_null(tmp_path: Path) -> None:
    written = ["NA", "null", "None", "N/A", "nan", "#N/A", "NULL", "-NaN", "TRUE", "007"]
    lines = ["id,t", *(f"{i},{cell}" for i, cell in enumerate(written)), f'{len(written)},""', f"{len(written) + 1},"]
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    with FakeProvider(responder="echo") as fake:
        done = run(predict_args(fake, str(tmp_path / "in.csv"), str(tmp_path / "out.parquet")), tmp_path)
        prompts = sorted(r.prompt for r in fake.chat_requests)
    assert done.returncode == 0, done.stderr
    # Every written cell was sent, and the quoted empty field "" as the empty string; only the
    # empty field (the last row) is null, and gets no request.
    assert prompts == sorted(f"say {cell}" for cell in [*written, ""])
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["t"] for r in out] == [*written, "", None]
    assert [r["y"] for r in out] == [f"say {cell}" for cell in [*written, ""]] + [None]


def test_json_lines_numbers_are_sent_and_written_back_as_written(tmp_path: Path) -> None:
    lines = ['{"id": 1, "t": 1, "mixed": 1}', '{"id": 2, "t": 12345678901234567890, "mixed": "a"}',
             '{"id": 3, "t": 1.0, "mixed": true}', '{"id": 4, "t": 1.10, "mixed": null}']
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    with FakeProvider(responder="echo") as fake:
        done = run(predict_args(fake, str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl")), tmp_path)
        prompts = sorted(r.prompt for r in fake.chat_requests)
    assert done.returncode == 0, done.stderr
    assert prompts == ["say 1", "say 1.0", "say 1.10", "say 12345678901234567890"]
    written = (tmp_path / "out.jsonl").read_text().splitlines()
    # The input's fields come back as they were written: the same numbers, in the same form.
    assert [line.split(', "mixed"')[0] for line in written] == [line.split(', "mixed"')[0] for line in lines]
    assert [json.loads(line)["mixed"] for line in written] == ["1", "a", "true", None]  # a mixed field: text


def test_a_csv_header_with_a_quoted_line_break_is_one_record(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text('"te\nxt",t\n1,yes\n')
    (tmp_path / "empty.csv").write_text('"te\nxt",t\n')
    with FakeProvider(responder="echo") as fake:
        done = run(predict_args(fake, str(tmp_path / "in.csv"), str(tmp_path / "out.jsonl")), tmp_path)
        empty = run(predict_args(fake, str(tmp_path / "empty.csv"), str(tmp_path / "empty.jsonl")), tmp_path)
        prompts = [r.prompt for r in fake.chat_requests]
    assert done.returncode == 0 and empty.returncode == 0, done.stderr + empty.stderr
    assert prompts == ["say yes"]
    assert json.loads((tmp_path / "out.jsonl").read_text()) == {"te\nxt": "1", "t": "yes", "y": "say yes",
                                                                 "y_error": None}
    assert (tmp_path / "empty.jsonl").read_text() == ""


def test_a_csv_is_read_ahead_from_the_file_itself_and_closing_the_source_stops_it(tmp_path: Path) -> None:
    # Pyarrow's read-ahead threads still reading a Python file object when the interpreter exited
    # aborted the process: 3 of 12 commands refused for a bad option, beside two busy loops.
    from dfllm.frames import files

    path = tmp_path / "in.csv"
    path.write_bytes(b'\xef\xbb\xbf"te\nxt",b\n"1\n2",x\n3,\n')  # a BOM, a header over two lines
    source = files.open_source(str(path), "csv", 10)
    assert source.schema.names == ["te\nxt", "b"]
    assert [batch.to_pylist() for batch in source.batches()] == [[{"te\nxt": "1\n2", "b": "x"},
                                                                  {"te\nxt": "3", "b": None}]]
    native = source._native
    assert native is not None and not native.closed
    source.close()
    assert native.closed



def test_a_csv_from_standard_input_starts_reading_ahead_only_when_its_first_batch_is_asked_for(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Read ahead from the moment it was opened, a command refused before its run (--mode batch from
    # standard input) exited with pyarrow's threads reading a Python file object, and aborted.
    import inspect
    import io
    import types

    from dfllm.frames import files

    def piped() -> None:
        stdin = io.BufferedReader(io.BytesIO(b"t,n\nhello,1\n,2\n"))
        monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=stdin))

    piped()
    source = files.open_source(files.STDIO, "csv", 10)
    assert source.schema == pa.schema([("t", pa.string()), ("n", pa.string())])
    unread = source.batches()
    assert source._reader is None and isinstance(unread, Generator)
    assert inspect.getgeneratorstate(unread) == "GEN_CREATED"
    assert [batch.to_pylist() for batch in source.batches()] == [[{"t": "hello", "n": "1"}, {"t": None, "n": "2"}]]
    source.close()
    piped()
    refused = files.open_source(files.STDIO, "csv", 10)  # opened and closed unread: nothing started
    refused.close()
    closed = refused.batches()
    assert isinstance(closed, Generator) and inspect.getgeneratorstate(closed) == "GEN_CLOSED"


@pytest.mark.parametrize("dst", ["out.parquet", "out.csv", "out.jsonl"])
def test_a_header_only_csv_writes_an_empty_output_with_the_answer_columns(tmp_path: Path, dst: str) -> None:
    (tmp_path / "empty.csv").write_text("id,t\n")
    (tmp_path / "one.csv").write_text("id,t\n1,yes\n")
    more = ("--choices", "yes,no", "--usage-columns")
    with FakeProvider(responder="echo") as fake:
        done = run(predict_args(fake, str(tmp_path / "empty.csv"), str(tmp_path / dst), *more), tmp_path)
        assert fake.requests == []
        one = run(predict_args(fake, str(tmp_path / "one.csv"), str(tmp_path / "one.parquet"), *more), tmp_path)
    assert done.returncode == 0, done.stderr
    assert one.returncode == 0, one.stderr
    if dst.endswith(".parquet"):
        written = pq.read_table(tmp_path / dst)
        assert written.num_rows == 0
        assert written.schema == pq.read_table(tmp_path / "one.parquet").schema  # the answer columns, typed
    elif dst.endswith(".csv"):
        assert (tmp_path / dst).read_text().splitlines() == [
            '"id","t","y","y_prompt_tokens","y_cached_tokens","y_completion_tokens","y_error"']
    else:
        assert (tmp_path / dst).read_text() == ""
    assert "0 rows" in done.stderr


def test_a_target_that_is_not_utf8_exits_2_before_any_request(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("t\na\n")
    with FakeProvider(responder="echo") as fake:
        args = [os.fsencode(a) for a in predict_args(fake, str(tmp_path / "in.csv"), str(tmp_path / "o.parquet"))]
        args[args.index(b"--target") + 1] = b"y\xff"  # Python reads this argument as 'y\udcff'
        done = subprocess.run(args, env=env_for(tmp_path), capture_output=True, timeout=120)
        sent = len(fake.requests)
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 2, stderr
    assert "target holds a lone surrogate '\\udcff' at position 1" in stderr and "Traceback" not in stderr
    assert sent == 0 and not (tmp_path / "o.parquet").exists()


@pytest.mark.parametrize(("line", "field"), [
    (b'{"t": "bad \\ud800"}', "'t'"), (b'{"t": "x", "meta": {"tags": ["\\udfff"]}}', "'meta'"),
    (b'{"t": "cesu \xed\xa0\x80"}', "'t'"), (b'{"t\\udc80": "x"}', "'t\\\\udc80'"),
])
def test_a_json_lines_cell_with_a_lone_surrogate_exits_2_naming_line_and_field_before_any_request(
        tmp_path: Path, line: bytes, field: str) -> None:
    (tmp_path / "in.jsonl").write_bytes(b'{"t": "ok \\ud83d\\ude00"}\n' + line + b'\n{"t": "fine"}\n')
    (tmp_path / "pair.jsonl").write_bytes(b'{"t": "ok \\ud83d\\ude00"}\n')
    with FakeProvider(responder="echo") as fake:
        done = run(predict_args(fake, str(tmp_path / "in.jsonl"), str(tmp_path / "o.jsonl")), tmp_path)
        assert fake.requests == []
        pair = run(predict_args(fake, str(tmp_path / "pair.jsonl"), str(tmp_path / "pair.out.jsonl")), tmp_path)
        prompts = [r.prompt for r in fake.chat_requests]
    assert done.returncode == 2, done.stderr
    assert f"JSON Lines line 2: field {field} holds a lone surrogate" in done.stderr, done.stderr
    assert "nothing was sent" in done.stderr and not (tmp_path / "o.jsonl").exists()
    assert pair.returncode == 0 and prompts == ["say ok \U0001f600"]  # a surrogate pair is one character


def test_a_key_pasted_as_a_param_value_is_never_echoed(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("t\na\n")
    pasted = "sk-proj-Zq8Xv3Lm9Tn2Rb7Wc4Hy6Kd1Pf5Gs0Ju"
    with FakeProvider() as fake:
        params = [arg for name in ("temperature", "max_tokens", "seed") for arg in ("--param", f"{name}={pasted}")]
        done = run(predict_args(fake, str(tmp_path / "in.csv"), str(tmp_path / "o.csv"), *params), tmp_path)
        sent = len(fake.requests)
    assert done.returncode == 2 and sent == 0, done.stderr
    assert pasted not in done.stderr + done.stdout and pasted[8:20] not in done.stderr + done.stdout
    for name in ("temperature must be a number", "max_tokens must be a positive integer", "seed must be an integer"):
        assert f"{name}" in done.stderr and "got a value (40 characters, not shown: it may hold a key)" in done.stderr


def pasted_key() -> str:
    """A key as a user would paste it: new each run, so no fixed string in dfllm could hide it."""
    return "sk-proj-" + "".join(random.choices(string.ascii_letters + string.digits, k=40))


def test_a_key_pasted_as_an_option_flags_value_is_never_echoed_an_ordinary_bad_value_is(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("t\na\n")
    pasted = pasted_key()
    with FakeProvider() as fake:
        done = run(predict_args(fake, str(tmp_path / "in.csv"), str(tmp_path / "o.csv"), "--temperature", pasted,
                                "--max-repairs", pasted), tmp_path)
        hot = run(predict_args(fake, str(tmp_path / "in.csv"), str(tmp_path / "o.csv"), "--temperature", "hot"),
                  tmp_path)
        sent = len(fake.requests)
    assert done.returncode == 2 and hot.returncode == 2 and sent == 0, done.stderr
    assert pasted not in done.stderr + done.stdout and pasted[8:20] not in done.stderr + done.stdout
    assert "--temperature expects float, got a value (48 characters, not shown: it may hold a key)" in done.stderr
    assert "--max-repairs expects int, got a value (48 characters" in done.stderr
    assert "--temperature 'hot': could not convert string to float: 'hot'. Expected float." in hot.stderr


def test_no_flag_of_the_command_echoes_a_pasted_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in.csv").write_text("t\na\n")
    pasted = pasted_key()
    call = ["predict", str(tmp_path / "in.csv"), str(tmp_path / "o.csv"), "--engine", "openai", "--model", "m",
            "--template", "say {{t}}", "--target", "y"]
    # argparse's own checks (a type, a choice, an extra argument) quote what they refuse.
    for extra in (["--batch-rows", pasted], ["--input-format", pasted], [pasted]):
        with pytest.raises(SystemExit) as stopped:
            main([*call, *extra])
        err = capsys.readouterr().err
        assert stopped.value.code == 2 and pasted not in err and "(48 characters, not shown: it may hold a key)" in err
    # dfllm's checks of the engine, the key's variable and the template.
    assert main([*call, "--engine", pasted]) == 2
    assert main([*call, "--key-env", pasted]) == 2
    assert main([*call, "--template", pasted]) == 2
    shown = capsys.readouterr()
    assert pasted not in shown.err + shown.out and pasted[8:20] not in shown.err
    assert "Unknown provider '(48 characters, not shown: it may hold a key)'" in shown.err
    assert "--key-env takes the name of an environment variable holding the key, got a value (48" in shown.err
    assert "prompt_template '(48 characters, not shown: it may hold a key)' has no {{column}}" in shown.err
    with pytest.raises(SystemExit):
        main([*call, "--batch-rows", "many", "--input-format", "xls"])
    assert "argument --batch-rows: invalid int value: 'many'" in capsys.readouterr().err  # an ordinary one is quoted
    assert main([*call, "--engine", "opnai", "--key-env", "NO_SUCH_VAR_FOR_DFLLM"]) == 2
    shown = capsys.readouterr()
    assert "Unknown provider 'opnai'. Did you mean 'openai'?" in shown.err
    assert "--key-env NO_SUCH_VAR_FOR_DFLLM: that environment variable is not set." in shown.err
