"""The ``dfllm`` command: predict over files of any size, list engines and models.

    dfllm predict INPUT OUTPUT --engine openai --model gpt-4o-mini --template '...' --target y [options]
    dfllm engines
    dfllm models --engine openai

Every predict option is a flag generated from the option table (``dfllm.config.options``),
its help text from the option's doc, its value parsed by the option's type. Keys come from
the provider's environment variable (or ``--key-env VAR``); a key given as ``--param`` works
but is warned about, since it lands in shell history and the process list.

Exit status: 0 every row answered; 1 some rows failed (their errors are in the error
column); 2 configuration errors (all listed, nothing sent); 3 the run stopped (key refused,
unreadable input); 130 interrupted. Answers already received are in the cache, so running
the same command again sends only the rows still without an answer.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from dfllm._exceptions import BatchError, ConfigurationError, DfllmError
from dfllm.config.catalog import list_models
from dfllm.config.engines import EngineConfig, configure, connection_params, hidden_name_problem, is_plain_name
from dfllm.config.options import OPTION_NAMES, OPTIONS, Option
from dfllm.config.secrets import may_hold_key, shown_value, without_keys
from dfllm.drive.estimate import Estimator, assumption_problems
from dfllm.drive.jobs import batch_jobs
from dfllm.drive.stream import BatchRunner
from dfllm.engines.providers import PROVIDERS, Provider, needs_key
from dfllm.plan import Plan, make_plan, plan_batch, write_back
from dfllm.prompt.template import Template
from dfllm.runtime.embedding import EmbedSpec
from dfllm.runtime.progress import RunStats

OK, ROWS_FAILED, CONFIGURATION, STOPPED, INTERRUPTED = 0, 1, 2, 3, 130
DEFAULT_BATCH_ROWS = 50_000
_ENGINE_NAME = "cli"


class _Problems(Exception):
    """Configuration problems found before any request: printed together, exit status 2."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# -- values from text, by the option table's type ------------------------------------------------
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def _bool(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError("expected true or false")


def _bool_or_path(text: str) -> bool | str:
    try:
        return _bool(text)
    except ValueError:
        return text


def _json_or_text(text: str) -> Any:
    """JSON when it reads as JSON (or names a .json file, or is @file), else the text itself."""
    if text.startswith("@") or (text.endswith(".json") and Path(text).is_file()):
        return json.loads(Path(text.removeprefix("@")).read_text(encoding="utf-8"))
    if text[:1] in "[{\"" or text in ("null", "true", "false"):
        return json.loads(text)
    return text


def _str_list(text: str) -> list[str]:
    if text.startswith("["):
        value = json.loads(text)
        return value if isinstance(value, list) else [text]
    return [part.strip() for part in text.split(",")]


def _json_object(text: str) -> Any:
    value = _json_or_text(text)
    if isinstance(value, str):
        raise ValueError('expected a JSON object, e.g. \'{"key": 1}\', or @file.json')
    return value


PARSERS: dict[str, Callable[[str], Any]] = {
    "int": int,
    "float": float,
    "str": str,
    "path": str,
    "bool": _bool,
    "bool | path": _bool_or_path,
    "bool | path | url": _bool_or_path,
    "list[str]": _str_list,
    "str | list[str]": _json_or_text,
    "dict": _json_object,
}


def parser_for(option: Option) -> Callable[[str], Any]:
    return option.parse or PARSERS.get(option.type, _json_or_text)


# -- the argument parser ------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse, whose errors never quote a value that may hold a key: ``--batch-rows sk-...`` would
    say "invalid int value: 'sk-...'" (its subcommands' parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        super().error(without_keys(message, message))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dfllm", description="LLM predictions on the rows of a file.")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser(
        "predict", help="add a column of answers to a Parquet, CSV or JSON Lines file",
        description="Add a column of LLM answers to INPUT's rows and write them with every input column "
                    "to OUTPUT. Killed and run again with the same arguments, it sends only the rows "
                    "still without an answer. Exit status: 0 all answered, 1 some rows failed, "
                    "2 configuration errors, 3 the run stopped, 130 interrupted.")
    _add_call_arguments(predict, "the prompt, with {{column}} placeholders")
    predict.set_defaults(task="chat")
    embed = commands.add_parser(
        "embed", help="add a column of embedding vectors to a Parquet or JSON Lines file",
        description="Add a vector column (fixed_size_list<float32>) of each row's text to INPUT's rows and write "
                    "them to OUTPUT; identical texts are embedded once, many a request. Exit status as predict's.")
    _add_call_arguments(embed, "the text to embed: a column name, or a template with {{column}} placeholders")
    embed.set_defaults(task="embedding")

    engines = commands.add_parser("engines", help="list the providers and the environment variable of each key")
    engines.set_defaults()
    models = commands.add_parser("models", help="list the models an engine offers")
    _add_engine_arguments(models)
    batches = commands.add_parser(
        "batches", help="list (and cancel) the batch jobs dfllm has in flight for a cache",
        description="The provider batch jobs that --mode batch submitted and no run has collected yet. With "
                    "--engine (and --base-url, --param as for predict), only that engine's, each with its state "
                    "asked of the provider. Run the same predict command again to collect them.")
    _add_engine_arguments(batches, required=False)
    batches.add_argument("--cache", default=None, help="the SQLite cache file (default: dfllm's own)")
    batches.add_argument("--cancel", metavar="JOB_ID", help="cancel this job, or 'all' (needs --engine)")
    return parser


def _add_call_arguments(parser: argparse.ArgumentParser, template_help: str) -> None:
    """The arguments ``predict`` and ``embed`` share: files, engine, model, template, target, options."""
    parser.add_argument("input", help="input file (.parquet, .csv, .jsonl), or - for stdin")
    parser.add_argument("output", help="output file, written atomically; or - for stdout")
    _add_engine_arguments(parser)
    parser.add_argument("--model", help="the provider's model id (default: the provider's default)")
    parser.add_argument("--template", required=True, help=template_help)
    parser.add_argument("--target", required=True, help="name of the new answer column")
    parser.add_argument("--input-format", choices=["parquet", "csv", "jsonl"], help="when not by extension")
    parser.add_argument("--output-format", choices=["parquet", "csv", "jsonl"], help="when not by extension")
    parser.add_argument("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS,
                         help=f"rows read, sent and written at a time (default {DEFAULT_BATCH_ROWS:,})")
    dry = parser.add_argument_group("dry run", "with --dry-run, only estimate: nothing is sent or written")
    dry.add_argument("--dry-run", action="store_true", help="print rows, cache hits, requests, tokens, "
                     "time and, with --price-prompt and --price-completion, the cost online and in batch mode; "
                     "send nothing")
    dry.add_argument("--latency-s", type=float, default=1.0, help="seconds one request is assumed to take")
    dry.add_argument("--completion-tokens", type=int, help="answer tokens to assume per request")

    options = parser.add_argument_group("predict options", "from the option table (the README lists them too)")
    for option in OPTIONS:
        flag = "--" + option.name.replace("_", "-")
        default = "null, with a {target}_error column" if option.name == "errors" else option.shown_default
        help_text = f"{option.doc} (default: {default})".replace("%", "%%")
        if option.type == "bool":
            options.add_argument(flag, dest=f"option_{option.name}", action=argparse.BooleanOptionalAction,
                                 default=None, help=help_text)
        else:
            options.add_argument(flag, dest=f"option_{option.name}", metavar=option.type.upper().replace(" ", ""),
                                 default=None, help=help_text)


def _add_engine_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--engine", required=required, help=f"a provider: {', '.join(PROVIDERS)}")
    parser.add_argument("--base-url", help="the API's root URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a provider parameter, e.g. virtual_key=... for Portkey (repeatable)")
    parser.add_argument("--key-env", metavar="VAR", help="read the API key from this environment variable "
                        "instead of the provider's usual one")


# -- configuration ------------------------------------------------------------------------------
def engine_config(args: argparse.Namespace, problems: list[str]) -> EngineConfig | None:
    """The engine from --engine/--base-url/--param/--key-env, or None with its problems added."""
    provider = PROVIDERS.get(args.engine)
    using: dict[str, Any] = {}
    for position, item in enumerate(args.param, 1):
        name, sep, value = item.partition("=")
        if not sep or not name:
            problems.append(_param_problem(position, len(args.param), item))
            continue
        known = connection_params(provider) if provider is not None else frozenset()
        if not is_plain_name(name) and name not in known and name not in OPTION_NAMES:
            # Configure would quote it back ("Unknown option ...") and it may be a key: name it by place.
            hint = " Put '=' between the name and the value, not ':'." if ":" in name else ""
            problems.append(hidden_name_problem(f"--param number {position}", name) + hint)
            continue
        using[name] = value
        if provider is not None and _is_key_param(provider.key_params, name):
            env = provider.key_env or "--key-env VAR"
            print(f"dfllm: warning: --param {name}=... puts a key in your shell history and the process list; "
                  f"set {env} instead.", file=sys.stderr)
        elif provider is not None and name in provider.secret_params:
            print(f"dfllm: warning: --param {name}=... is a secret: it lands in your shell history and the "
                  "process list.", file=sys.stderr)
    if args.base_url is not None:
        using["base_url"] = args.base_url
    if args.key_env is not None:
        value = os.environ.get(args.key_env)
        if not value and may_hold_key(args.key_env):  # the key itself, pasted in place of its variable's name
            problems.append(f"--key-env takes the name of an environment variable holding the key, got "
                            f"{shown_value(args.key_env)}: put the key in a variable and name that.")
        elif not value:
            problems.append(f"--key-env {args.key_env}: that environment variable is not set.")
        elif provider is not None and provider.key_params:
            using[provider.key_params[-1]] = value
    if provider is not None and needs_key(provider, using.get("base_url")) and not _has_key(provider, using):
        problems.append(f"No API key for {provider.name}: set the environment variable {provider.key_env}, "
                        "or name another one with --key-env VAR.")
        return None
    try:
        return configure(_ENGINE_NAME, args.engine, using)
    except ConfigurationError as exc:
        problems += [without_keys(problem, args.engine) for problem in exc.problems]  # "Unknown provider 'sk-...'"
        return None


def _has_key(provider: Provider, using: dict[str, Any]) -> bool:
    return any(using.get(p) for p in provider.key_params) or bool(provider.key_env and os.environ.get(provider.key_env))


def _is_key_param(key_params: Sequence[str], name: str) -> bool:
    return name in key_params or name in ("api_key", "provider_api_key") or name.endswith("_api_key")


def _param_problem(position: int, count: int, item: str) -> str:
    """What is wrong with a --param lacking NAME=, never quoting it: it may be a key (api_key:sk-...)."""
    hint = " Put '=' between the name and the value, not ':'." if ":" in item else ""
    which = f"--param number {position} of {count}" if count > 1 else "--param"
    return (f"{which} has no NAME= before its value ({len(item)} characters, not shown: it may hold a key).{hint} "
            "Write --param NAME=VALUE, e.g. --param virtual_key=...; for the API key, set the provider's "
            "environment variable or --key-env VAR instead.")


def option_values(args: argparse.Namespace, problems: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw = getattr(args, f"option_{option.name}")
        if raw is None:
            continue
        if isinstance(raw, bool):
            values[option.name] = raw
            continue
        try:
            values[option.name] = parser_for(option)(raw)
        except (ValueError, OSError) as exc:
            problems.append(_option_problem(option, raw, exc))
    values.setdefault("errors", "null")  # a file keeps every row: failures go to the error column
    return values


def _option_problem(option: Option, raw: str, exc: Exception) -> str:
    """Why a flag's text is not of its option's type, never quoting a value that may hold a key:
    float() and int() quote what they could not read ("could not convert string to float: 'sk-...'")."""
    flag = "--" + option.name.replace("_", "-")
    if may_hold_key(raw):
        return f"{flag} expects {option.type}, got {shown_value(raw)}."
    return f"{flag} {raw!r}: {exc}. Expected {option.type}."


class _NoEngine:
    """Stands in for an engine whose own configuration failed, so the rest is still checked."""

    async def complete(self, request: Any) -> Any:
        raise AssertionError("a run with configuration problems never sends")

    async def aclose(self) -> None:
        return None


# -- commands -----------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "engines":
            return cmd_engines()
        if args.command == "models":
            return cmd_models(args)
        if args.command == "batches":
            return cmd_batches(args)
        if args.command == "embed":
            return cmd_predict(args)
        return cmd_predict(args)
    except _Problems as exc:
        _print_problems(exc.problems)
        return CONFIGURATION
    except KeyboardInterrupt:
        print("dfllm: interrupted. Answers received so far are cached: run the same command again to "
              "resume.", file=sys.stderr)
        return INTERRUPTED


def _print_problems(problems: list[str]) -> None:
    print(f"dfllm: {len(problems)} configuration problem{'s' if len(problems) > 1 else ''}, "
          "nothing was sent:", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)


def cmd_engines() -> int:
    rows = [("provider", "key variable", "base URL", "default model")]
    for p in PROVIDERS.values():
        key = p.key_env or ("none needed" if not p.key_required else "-")
        rows.append((p.name, key, p.base_url or "--base-url required" if p.kind == "http" else "in process",
                     p.default_model or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return OK


def cmd_models(args: argparse.Namespace) -> int:
    problems: list[str] = []
    config = engine_config(args, problems)
    if problems or config is None:
        raise _Problems(problems)
    try:
        for model in list_models(config):
            print(model)
    except DfllmError as exc:
        print(f"dfllm: {exc}", file=sys.stderr)
        return STOPPED
    return OK


def cmd_batches(args: argparse.Namespace) -> int:
    problems: list[str] = []
    config = engine_config(args, problems) if args.engine is not None else None
    if args.cancel is not None and args.engine is None:
        problems.append("--cancel needs --engine (and --base-url, --param) of the provider the jobs were sent to.")
    if problems:
        raise _Problems(problems)
    try:
        jobs = batch_jobs(args.cache if args.cache is not None else True, config, cancel=args.cancel)
    except DfllmError as exc:
        print(f"dfllm: {exc}", file=sys.stderr)
        return STOPPED
    for job in jobs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created))
        state = job.state
        told = "" if state is None else \
            f"  {state.status}  {state.completed:,}/{state.total:,} done, {state.failed:,} failed"
        print(f"{job.job_id or '(id not recorded)'}  {job.rows:,} rows  submitted {when}{told}")
    if not jobs:
        print("dfllm: no batch jobs in flight for this cache.", file=sys.stderr)
    return OK


def cmd_predict(args: argparse.Namespace) -> int:
    from dfllm.frames import files  # pyarrow (the optional dfllm[files] extra) loads only to read and write files

    problems: list[str] = []
    in_fmt, in_problems = files.format_problems(args.input, args.input_format, output=False)
    out_fmt, out_problems = files.format_problems(args.output, args.output_format, output=True)
    problems += in_problems + out_problems
    if args.batch_rows <= 0:
        problems.append(f"--batch-rows must be a positive number of rows, got {args.batch_rows}.")
    if args.option_mode == "batch" and args.input == files.STDIO:
        problems.append("--mode batch reads the input twice (to submit the jobs, then to write their answers), "
                        "and standard input can be read once: give the input as a file path.")
    if args.dry_run:
        problems += assumption_problems(args.latency_s, args.completion_tokens,
                                        names=lambda name: "--" + name.replace("_", "-"))
    config = engine_config(args, problems)
    options = option_values(args, problems)
    source = None
    if in_fmt is not None and not in_problems:
        try:
            source = files.open_source(args.input, in_fmt, max(args.batch_rows, 1))
        except (OSError, ValueError) as exc:  # pyarrow's read errors are ValueError (ArrowInvalid)
            problems.append(f"Cannot read {args.input!r} as {in_fmt}: {exc}")
    try:
        plan = _plan(source, config, args, options, problems)
        if problems or plan is None or source is None or out_fmt is None:
            raise _Problems(problems)
        if args.dry_run:
            return _dry_run(plan, source, args)
        assert in_fmt is not None  # the source was opened in it
        again = functools.partial(files.read_again, args.input, in_fmt, max(args.batch_rows, 1))
        return _run(plan, source, args.output, out_fmt, again)
    finally:
        if source is not None:
            source.close()


def _plan(source: Any, config: EngineConfig | None, args: argparse.Namespace, options: dict[str, Any],
          problems: list[str]) -> Plan | None:
    import pyarrow as pa  # optional: see cmd_predict

    schema = source.schema if source is not None else pa.schema([])
    engine: Any = config if config is not None else _NoEngine()
    if source is None:
        # The input's columns are unknown: check everything else against the template's own fields.
        schema = pa.schema([(name, pa.string()) for name in _template_fields(args.template)])
    try:
        # Image cells that are paths are read only under --image-root: a file's cells must not send
        # whatever files they name.
        plan = make_plan(schema.empty_table(), engine, args.model, args.template, args.target, options,
                         local_images=args.option_image_root is not None, task=args.task)
    except ConfigurationError as exc:
        # A key pasted as the template, target or model is quoted back by their checks.
        problems += [without_keys(problem, [args.template, args.target, args.model]) for problem in exc.problems]
        return None
    return plan if config is not None else None


def _template_fields(template: str) -> list[str]:
    try:
        return list(Template(template).fields)
    except ConfigurationError:
        return []  # make_plan reports the template itself


def _dry_run(plan: Plan, source: Any, args: argparse.Namespace) -> int:
    estimator = Estimator(plan, latency_s=args.latency_s, completion_tokens=args.completion_tokens)
    try:
        for batch in source.batches():
            estimator.add(plan_batch(plan, batch))
        print(estimator.result())
    finally:
        estimator.close()
    return OK


def _run(plan: Plan, source: Any, output: str, out_fmt: str, again: Callable[[], Iterable[Any]]) -> int:
    from dfllm.frames.files import Sink  # optional: see cmd_predict

    stats = RunStats()
    schema = write_back(plan, [], RunStats()).schema
    try:
        # Vectors of a length the model decides: the file's schema is the first batch's.
        sink: Any = _FirstBatchSink(output, out_fmt, schema) if _length_unknown(plan) else Sink(output, out_fmt, schema)
    except (OSError, ValueError) as exc:
        raise _Problems([f"Cannot write {output!r} as {out_fmt}: {exc}"]) from exc
    committed = False
    try:
        asyncio.run(_stream(plan, source, sink, stats, again))
        sink.commit()
        committed = True
    except BatchError as exc:
        print(f"dfllm: {exc}\ndfllm: errors='raise': {output} was not written. Answers received are cached.",
              file=sys.stderr)
        return ROWS_FAILED
    except DfllmError as exc:
        print(f"dfllm: the run stopped: {exc}\ndfllm: {output} was not written. Answers received are cached: "
              "fix the cause and run the same command again.", file=sys.stderr)
        return STOPPED
    except (OSError, ValueError) as exc:
        print(f"dfllm: the run stopped reading or writing: {exc}\ndfllm: {output} was not written.",
              file=sys.stderr)
        return STOPPED
    finally:
        if not committed:
            sink.abort()
        print(summary(stats), file=sys.stderr)
    return ROWS_FAILED if stats.failed_rows else OK


def _length_unknown(plan: Plan) -> bool:
    return isinstance(plan.spec, EmbedSpec) and plan.spec.dimensions is None


class _FirstBatchSink:
    """A ``Sink`` opened at the first batch, with that batch's schema (an embedding's length)."""

    def __init__(self, path: str, fmt: str, schema: Any) -> None:
        from dfllm.frames.files import Sink  # optional: see cmd_predict

        if fmt == "csv":
            raise ValueError("CSV cannot hold a vector column; write Parquet or JSON Lines.")
        self._open = functools.partial(Sink, path, fmt)
        self._schema = schema
        self._sink: Any = None

    def write(self, batch: Any) -> None:
        if self._sink is None:
            self._sink = self._open(batch.schema)
        self._sink.write(batch)

    def commit(self) -> None:
        if self._sink is None:  # no rows: the declared schema
            self._sink = self._open(self._schema)
        self._sink.commit()

    def abort(self) -> None:
        if self._sink is not None:
            self._sink.abort()


async def _stream(plan: Plan, source: Any, sink: Any, stats: RunStats, again: Callable[[], Iterable[Any]]) -> None:
    """The file through the runner, batch by batch; in batch mode, passes over it first (``again``
    reads it from its start) submit and collect the jobs."""
    async with BatchRunner(plan, stats, total_rows=source.total_rows) as runner:
        if plan.options.mode == "batch":
            await runner.submit_all(again)
        for batch in source.batches():
            sink.write(await runner.predict(batch))


def summary(stats: RunStats) -> str:
    return f"dfllm: {stats.summary()}"


if __name__ == "__main__":
    raise SystemExit(main())
