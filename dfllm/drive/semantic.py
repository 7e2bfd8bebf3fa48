"""Semantic operations on vector columns: ``sim_join``, ``dedup`` and ``sem_join``.

- ``sim_join(left, right, left_on=, right_on=, k=)``: each left row's ``k`` most similar right rows
  by cosine, exactly. Vectors are normalised once to float32; left rows are taken in blocks of
  ``block_rows`` against right rows in blocks of ``block_rows``, each block product reduced at once
  into a running top-k per left row, so no ``n * m`` matrix is ever held: working memory is the
  block product (``block_rows**2`` float32) and its mask, plus the vectors and the answer.
- ``dedup(df, column, threshold=)``: a cluster id per row, near-duplicates (a self ``sim_join``
  above ``threshold``) joined by union-find; the id is the smallest row position in the cluster.
- ``sem_join(left, right, engine, model, "Is {{left.name}} {{right.title}}?", left_on=, right_on=)``:
  candidate pairs from ``sim_join`` (about ``n * k``, not ``n * m``), each decided by ``predict``.
  ``sem_join_estimate`` counts the candidates and estimates the requests before anything is sent.

pandas and Polars frames; the answer is in the left frame's library. ``sim_join`` takes a Dask left
side, partition by partition against the whole right side (up to ``BROADCAST_BYTES`` of vectors);
other uses of Dask frames are refused before any work: compute them first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from dfllm._exceptions import ParameterError, did_you_mean
from dfllm.drive.eager import predict
from dfllm.drive.embed import embed
from dfllm.drive.estimate import Estimate, estimate
from dfllm.prompt.template import Template

if TYPE_CHECKING:  # pyarrow is the files extra; vector columns are Arrow, so it is there when they are
    import pyarrow as pa

Floats = npt.NDArray[np.float32]
Positions = npt.NDArray[np.intp]

BLOCK_ROWS = 2048  # a block product of 2048 x 2048 float32 is 16 MiB
ALL_PAIRS_LIMIT = 10_000  # sem_join(all_pairs=True) sends n * m requests: only for small frames
_YES_NO = ["yes", "no"]
_JUDGE_SYSTEM = "Answer the question with yes or no only."


@dataclass(frozen=True)
class Matches:
    """Each left row's best right rows: positions and cosine, by left row then descending score."""

    left: Positions
    right: Positions
    score: Floats


# --- vectors -------------------------------------------------------------------------------------


def _library(df: Any) -> str | None:
    """"pandas", "polars", or None for a frame this module does not join."""
    module = type(df).__module__.split(".")[0]
    kind = type(df).__name__
    if module == "pandas" and kind == "DataFrame":
        return "pandas"
    if module == "polars" and kind == "DataFrame":
        return "polars"
    return None


def _columns(df: Any) -> list[str]:
    return [str(c) for c in df.columns]


def _arrow(df: Any, column: str) -> pa.Array:
    """The column as one Arrow array (pandas' ArrowDtype and Polars' Array are zero-copy)."""
    import pyarrow as pa

    if _library(df) == "polars":
        values: Any = df.get_column(column).to_arrow()
    else:
        series = df[column]
        values = series.array.__arrow_array__() if hasattr(series.array, "__arrow_array__") else pa.array(series)
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _vector_problem(array: pa.Array, where: str) -> tuple[int | None, str | None]:
    """(dimension, None) for a vector column, else (None, why not and how to fix it)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = array.type
    fix = (f"{where} must hold vectors (a Polars Array(Float32, dim) or pandas ArrowDtype fixed_size_list "
           "column, e.g. from dfllm.embed)")
    if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        return None, f"{fix}; it holds {kind}."
    if not pa.types.is_floating(kind.value_type):
        return None, f"{fix}; its values are {kind.value_type}, not floats."
    if pa.types.is_fixed_size_list(kind):
        return kind.list_size, None
    lengths = set(pc.unique(pc.list_value_length(array).drop_null()).to_pylist())
    if len(lengths) > 1:
        return None, f"{where} holds vectors of different lengths {sorted(lengths)[:5]}: one dimension is needed."
    return (lengths.pop() if lengths else 0), None


def vectors(array: pa.Array) -> tuple[Floats, npt.NDArray[np.bool_]]:
    """(unit float32 rows, which rows are usable): a null vector, NaN, or a zero vector has no matches."""
    import pyarrow as pa

    n, valid = len(array), np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_fixed_size_list(array.type):
        dim = array.type.list_size
        # .values ignores the array's offset: slice it; null rows hold placeholder values, masked below.
        flat = array.values.slice(array.offset * dim, n * dim)
        matrix = np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(n, dim)
    else:
        dim = 0 if not valid.any() else len(array[int(np.argmax(valid))])
        matrix = np.zeros((n, dim), dtype=np.float32)
        matrix[valid] = np.asarray(array.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)
    norms = np.linalg.norm(matrix, axis=1)
    valid &= np.isfinite(norms) & (norms > 0)
    unit = np.zeros_like(matrix)
    np.divide(matrix, norms[:, None], out=unit, where=valid[:, None])
    return unit, valid


# --- the blocked top-k ---------------------------------------------------------------------------


def top_k(queries: Floats, items: Floats, k: int, *, threshold: float | None = None,
          block_rows: int = BLOCK_ROWS) -> Matches:
    """Each query row's ``k`` best item rows by dot product (cosine for unit rows), exact.

    Ties go to the lower item position. Pairs under ``threshold`` are left out, so a row may
    have fewer than ``k``. Memory: one ``block_rows x block_rows`` product and its mask at a time.
    """
    k = min(k, len(items))
    floor = np.float32(-np.inf) if threshold is None else np.nextafter(np.float32(threshold), np.float32(-np.inf))
    parts: list[Matches] = []
    if k == 0 or len(queries) == 0:
        return Matches(np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0, np.float32))
    product = np.empty(block_rows * min(block_rows, len(items)), dtype=np.float32)
    for start in range(0, len(queries), block_rows):
        block = queries[start:start + block_rows]
        best_score, best_item = _block_top_k(block, items, k, floor, block_rows, product)
        kept = best_item >= 0
        rows = np.broadcast_to(np.arange(start, start + len(block), dtype=np.intp)[:, None], kept.shape)
        parts.append(Matches(rows[kept], best_item[kept], best_score[kept]))
    return Matches(np.concatenate([p.left for p in parts]), np.concatenate([p.right for p in parts]),
                   np.concatenate([p.score for p in parts]))


def _block_top_k(block: Floats, items: Floats, k: int, floor: np.float32, block_rows: int,
                 product: Floats) -> tuple[Floats, Positions]:
    """The running top-k of one block of queries over every item block, best first per row."""
    best_score = np.full((len(block), k), -np.inf, dtype=np.float32)
    best_item = np.full((len(block), k), -1, dtype=np.intp)
    for start in range(0, len(items), block_rows):
        chunk = items[start:start + block_rows]
        scores = product[:len(block) * len(chunk)].reshape(len(block), len(chunk))
        np.matmul(block, chunk.T, out=scores)
        _admit(best_score, best_item, scores, start, floor)
    return best_score, best_item


def _admit(best_score: Floats, best_item: Positions, scores: Floats, offset: int, floor: np.float32) -> None:
    """Merge one block product into the running top-k (rows kept sorted, best first)."""
    k = best_score.shape[1]
    bar = np.maximum(best_score[:, -1], floor)  # the score a newcomer must beat, per row
    # Past the first blocks few rows have a newcomer: find them by their maximum, then look closer.
    hot = np.flatnonzero(scores.max(axis=1) > bar)
    if hot.size == 0:
        return
    sub, sub_bar = scores[hot], bar[hot]
    passed = sub > sub_bar[:, None]
    if sub.shape[1] > k and np.count_nonzero(passed) > 2 * k * len(hot):
        # Dense (the first block of a row): each row's k best of this block first, then the merge.
        width = sub.shape[1]
        cols = np.argpartition(sub, width - k, axis=1)[:, width - k:].ravel()
        at = np.repeat(np.arange(len(hot), dtype=np.intp), k)
        found = sub[at, cols]
        keep = found > sub_bar[at]
        at, cols, found = at[keep], cols[keep], found[keep]
    else:
        at, cols = np.nonzero(passed)
        found = sub[at, cols]
    _merge(best_score, best_item, hot[at], cols.astype(np.intp) + offset, found)


def _merge(best_score: Floats, best_item: Positions, rows: Positions, items: Positions, found: Floats) -> None:
    """Each touched row's k best of its current k and its newcomers, best first, ties to the lower item."""
    k = best_score.shape[1]
    touched = np.unique(rows)
    all_rows = np.concatenate([np.repeat(touched, k), rows])
    all_scores = np.concatenate([best_score[touched].ravel(), found])
    all_items = np.concatenate([best_item[touched].ravel(), items])
    # Placeholders (-1) sort after every real item of the same score, which only -inf has.
    tie_break = np.where(all_items < 0, np.iinfo(np.intp).max, all_items)
    order = np.lexsort((tie_break, -all_scores, all_rows))
    all_rows, all_scores, all_items = all_rows[order], all_scores[order], all_items[order]
    rank = np.arange(len(all_rows)) - np.searchsorted(all_rows, all_rows, side="left")
    keep = rank < k
    best_score[all_rows[keep], rank[keep]] = all_scores[keep]
    best_item[all_rows[keep], rank[keep]] = all_items[keep]


def matches(left: pa.Array, right: pa.Array, k: int, *, threshold: float | None = None,
            block_rows: int = BLOCK_ROWS, exclude_self: bool = False) -> Matches:
    """``top_k`` over two vector columns, in row positions: null, NaN and zero vectors match nothing."""
    left_unit, left_valid = vectors(left)
    right_unit, right_valid = (left_unit, left_valid) if exclude_self else vectors(right)
    left_rows, right_rows = np.flatnonzero(left_valid), np.flatnonzero(right_valid)
    found = top_k(left_unit[left_rows], right_unit[right_rows], k + int(exclude_self), threshold=threshold,
                  block_rows=block_rows)
    found = Matches(left_rows[found.left], right_rows[found.right], found.score)
    if exclude_self:
        other = found.left != found.right
        found = Matches(found.left[other], found.right[other], found.score[other])
    return found


# --- frames --------------------------------------------------------------------------------------


def _frame_problems(left: Any, right: Any, verb: str) -> list[str]:
    problems = []
    for side, df in (("left", left), ("right", right)):
        if _library(df) is None:
            kind = f"{type(df).__module__}.{type(df).__name__}"
            fix = ("compute it first (ddf.compute()), or a sample of it: the join needs both sides in memory"
                   if type(df).__module__.startswith("dask") else
                   "collect it first (lf.collect())" if type(df).__name__ == "LazyFrame" else
                   "pass a pandas or Polars DataFrame")
            problems.append(f"{verb} joins pandas and Polars DataFrames; {side} is a {kind}: {fix}.")
    return problems


def _number_problems(k: Any, threshold: Any, block_rows: Any) -> list[str]:
    problems = []
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        problems.append(f"k must be a whole number of at least 1 (the matches kept per left row), got {k!r}.")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not -1.0 <= threshold <= 1.0):
        problems.append(f"threshold must be a cosine between -1 and 1 (e.g. 0.8), or None, got {threshold!r}.")
    if isinstance(block_rows, bool) or not isinstance(block_rows, (int, np.integer)) or block_rows < 1:
        problems.append(f"block_rows must be a whole number of at least 1, got {block_rows!r}.")
    return problems


def _column_problem(df: Any, column: Any, where: str) -> tuple[int | None, str | None]:
    """(dimension, None) when ``column`` of ``df`` holds vectors, else (None, the problem)."""
    names = _columns(df)
    if not isinstance(column, str) or column not in names:
        return None, (f"{where}={column!r} is not a column of the {where.split('_')[0]} frame."
                      f"{did_you_mean(str(column), names)} Its columns: {names}.")
    return _vector_problem(_arrow(df, column), f"{where}={column!r}")


def _vector_problems(left: Any, right: Any, left_on: Any, right_on: Any) -> list[str]:
    """Both columns exist, hold vectors, of one dimension: every problem at once."""
    (left_dim, left_problem), (right_dim, right_problem) = (_column_problem(left, left_on, "left_on"),
                                                            _column_problem(right, right_on, "right_on"))
    problems = [p for p in (left_problem, right_problem) if p]
    if left_dim is not None and right_dim is not None and left_dim != right_dim:
        problems.append(f"left_on={left_on!r} holds {left_dim}-dimensional vectors and right_on={right_on!r} "
                        f"{right_dim}-dimensional ones: embed both with the same model and dimensions.")
    return problems


def _in_library(df: Any, library: str) -> Any:
    """``df`` as a frame of ``library`` (the right side takes the left side's)."""
    if _library(df) == library:
        return df
    if library == "pandas":
        import pandas as pd

        return df.to_pandas(types_mapper=pd.ArrowDtype)
    import polars as pl

    return pl.from_pandas(df)


def _take(df: Any, positions: Positions) -> Any:
    """The rows at ``positions``, in that order, with a fresh index."""
    if _library(df) == "polars":
        import polars as pl

        return df.select(pl.all().gather(pl.Series(positions, dtype=pl.Int64)))
    return df.iloc[positions].reset_index(drop=True)


def _renamed(df: Any, names: dict[Any, str]) -> Any:
    return df.rename(names) if _library(df) == "polars" else df.rename(columns=names)


def _joined(left: Any, right: Any, found: Matches, suffix: str, extra: dict[str, Any]) -> Any:
    """Left rows beside their right rows (clashing right names get ``suffix``), then ``extra`` columns."""
    library = _library(left) or "pandas"
    left_part, right_part = _take(left, found.left), _take(_in_library(right, library), found.right)
    taken = set(_columns(left))
    right_part = _renamed(right_part, {c: f"{c}{suffix}" for c in right_part.columns if str(c) in taken})
    if library == "polars":
        import polars as pl

        out = pl.concat([left_part, right_part], how="horizontal")
        return out.with_columns([pl.Series(name, values) for name, values in extra.items()])
    import pandas as pd

    out = pd.concat([left_part, right_part], axis=1)
    for name, values in extra.items():
        out[name] = values
    return out


def _clash_problems(left: Any, right: Any, suffix: str, added: Sequence[str]) -> list[str]:
    taken = set(_columns(left))
    out = [*taken, *(f"{c}{suffix}" if c in taken else c for c in _columns(right))]
    return [f"The joined frame already has a column {name!r}; pass another name for it "
            f"(score=..., target=...) or rename the column." for name in added if name in out]


# --- sim_join ------------------------------------------------------------------------------------


def sim_join(left: Any, right: Any, *, left_on: str, right_on: str, k: int = 5, threshold: float | None = None,
             score: str = "similarity", suffix: str = "_right", block_rows: int = BLOCK_ROWS,
             engine: Any = None, model: str | None = None, **options: Any) -> Any:
    """Each left row beside its ``k`` most similar right rows by cosine, with the ``score`` column.

    ``left_on`` / ``right_on`` name vector columns (``dfllm.embed``'s), or text columns when
    ``engine`` and ``model`` (an embedding model) are given: they are embedded first, ``options``
    going to ``dfllm.embed``. Exact: every pair is scored, in ``block_rows x block_rows`` blocks
    (memory flat in the frames' sizes). Rows come by left row, then descending score (ties to the
    earlier right row); ``threshold`` drops pairs under it; a null vector matches nothing. Right
    columns whose names the left has get ``suffix``. The result is in the left frame's library.
    """
    if _is_dask(left):
        return _dask_sim_join(left, right, left_on=left_on, right_on=right_on, k=k, threshold=threshold,
                              score=score, suffix=suffix, block_rows=block_rows)
    problems = _frame_problems(left, right, "sim_join") + _number_problems(k, threshold, block_rows)
    if problems:
        raise ParameterError(problems)
    left, left_vectors = _embedded(left, left_on, engine, model, options)
    right, right_vectors = _embedded(right, right_on, engine, model, options)
    problems = _vector_problems(left, right, left_vectors, right_vectors)
    problems += _clash_problems(left, right, suffix, [score])
    if problems:
        raise ParameterError(problems)
    found = matches(_arrow(left, left_vectors), _arrow(right, right_vectors), int(k), threshold=threshold,
                    block_rows=int(block_rows))
    joined = _joined(_without(left, left_vectors, left_on), _without(right, right_vectors, right_on), found,
                     suffix, {score: found.score})
    return joined


def _embedded(df: Any, column: Any, engine: Any, model: str | None, options: dict[str, Any]) -> tuple[Any, Any]:
    """(df, its vector column): a text column is embedded first when an engine is given."""
    if engine is None or not isinstance(column, str) or column not in _columns(df):
        return df, column
    if _vector_problem(_arrow(df, column), column)[1] is None:
        return df, column
    target = next(t for t in (f"_dfllm_vector{i or ''}" for i in range(len(df.columns) + 1)) if t not in df.columns)
    return embed(df, engine, model, column, target, **options), target


def _without(df: Any, vectors_column: str, given: str) -> Any:
    """``df`` less the vector column ``sim_join`` made itself (the caller's columns all stay)."""
    if vectors_column == given:
        return df
    return df.drop(vectors_column) if _library(df) == "polars" else df.drop(columns=[vectors_column])


# --- dedup ---------------------------------------------------------------------------------------


BROADCAST_BYTES = 2 * 1024**3  # the most of the right side's vectors sent whole to every Dask partition


def _is_dask(df: Any) -> bool:
    return type(df).__module__.startswith("dask") and hasattr(df, "map_partitions")


def _dask_sim_join(left: Any, right: Any, **how: Any) -> Any:
    """A Dask left side, lazily, partition by partition, each against the whole right side (broadcast:
    computed first when it is a Dask frame), within ``BROADCAST_BYTES`` of vectors; else an error."""
    if _is_dask(right):
        right = right.compute()
    problems = _frame_problems(left._meta, right, "sim_join") + _number_problems(how["k"], how["threshold"],
                                                                                how["block_rows"])
    if not problems:
        size = _arrow(right, how["right_on"]).nbytes if how["right_on"] in _columns(right) else 0
        if size > BROADCAST_BYTES:
            problems.append(f"sim_join on Dask sends the right side whole to every partition; its vectors are "
                            f"{size / 2**30:.1f} GiB, over {BROADCAST_BYTES / 2**30:g} GiB. Swap the sides (the "
                            "larger one on the left), or shorten the vectors (dimensions=).")
    if problems:
        raise ParameterError(problems)
    meta = sim_join(left._meta, right, **how)
    return left.map_partitions(sim_join, right, meta=meta, **how)


def dedup(df: Any, column: str, *, threshold: float = 0.9, k: int = 10, target: str | None = None,
          block_rows: int = BLOCK_ROWS) -> Any:
    """A copy of ``df`` with ``target`` (default ``{column}_cluster``): one id per group of near-duplicates.

    Two rows are near-duplicates when one is among the other's ``k`` nearest neighbours (a self
    ``sim_join`` on the vector column ``column``) with cosine at least ``threshold``; groups are
    closed under that (A ~ B and B ~ C put A and C together). A group's id is its smallest row
    position (0-based), so a row alone keeps its own position, and so does a row with a null vector.
    """
    name = target if target is not None else f"{column}_cluster"
    problems = _frame_problems(df, df, "dedup") + _number_problems(k, threshold, block_rows)
    if threshold is None:
        problems.append("dedup needs a threshold: the cosine at which two rows are the same (e.g. 0.9).")
    if problems:
        raise ParameterError(problems)
    _, problem = _column_problem(df, column, "column")
    problems = [problem] if problem else []
    if name in _columns(df):
        problems.append(f"The frame already has a column {name!r}; pass target=... to name the cluster column.")
    if problems:
        raise ParameterError(problems)
    vectors_column = _arrow(df, column)
    found = matches(vectors_column, vectors_column, int(k), threshold=threshold, block_rows=int(block_rows),
                    exclude_self=True)
    clusters = components(len(vectors_column), found.left, found.right)
    if _library(df) == "polars":
        import polars as pl

        return df.with_columns(pl.Series(name, clusters, dtype=pl.Int64))
    out = df.copy(deep=False)
    out[name] = clusters
    return out


def components(n: int, a: Positions, b: Positions) -> npt.NDArray[np.int64]:
    """Each of ``n`` nodes' smallest connected node, over the edges ``a[i] -- b[i]``.

    Union-find in whole arrays: every root hooks under the smallest root it touches, then paths
    are halved until each node points at its root; a root is the smallest node of its tree.
    """
    parent = np.arange(n, dtype=np.int64)
    while True:
        root_a, root_b = parent[a], parent[b]
        apart = root_a != root_b
        if not apart.any():
            return parent
        low, high = np.minimum(root_a[apart], root_b[apart]), np.maximum(root_a[apart], root_b[apart])
        np.minimum.at(parent, high, low)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped


# --- sem_join ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SemJoinEstimate:
    """What a ``sem_join`` would send: its candidate pairs against every pair, and ``estimate``'s numbers."""

    candidate_pairs: int
    all_pairs: int  # n * m: what asking about every pair would send
    requests: Estimate

    def __str__(self) -> str:
        share = self.candidate_pairs / self.all_pairs if self.all_pairs else 0.0
        return (f"candidate pairs      {self.candidate_pairs:,} of {self.all_pairs:,} ({share:.2%} of n * m)\n"
                f"{self.requests}")


@dataclass(frozen=True)
class _Candidates:
    """The pairs a ``sem_join`` asks about, the frame ``predict`` answers, and the call's options."""

    found: Matches
    scored: bool
    pairs: Any
    call: dict[str, Any]


def sem_join(left: Any, right: Any, engine: Any, model: str | None, template: str | Template,
             target: str = "match", *, left_on: str | None = None, right_on: str | None = None, k: int = 5,
             threshold: float | None = None, all_pairs: bool = False, keep_all: bool = False,
             score: str = "similarity", suffix: str = "_right", embed_model: str | None = None,
             block_rows: int = BLOCK_ROWS, **options: Any) -> Any:
    """Left rows joined to the right rows the model says match, one question per candidate pair.

    ``template`` names cells as ``{{left.name}}`` and ``{{right.title}}``. Candidates are each left
    row's ``k`` most similar right rows by the vector columns ``left_on`` / ``right_on`` (``sim_join``;
    text columns are embedded first with ``embed_model`` on ``engine``): about ``n * k`` requests, not
    ``n * m``. ``all_pairs=True`` asks about every pair, allowed up to ``ALL_PAIRS_LIMIT`` pairs.
    The answer is ``choices=["yes", "no"]`` unless ``choices`` or ``schema`` is given; the result
    keeps the pairs answered "yes" (``keep_all=True``: every candidate, with ``target`` and, with
    ``errors="null"``, ``{target}_error``). ``options`` go to ``dfllm.predict``: its cache, limits,
    retries and errors hold. ``sem_join_estimate`` shows the numbers first, sending nothing.
    """
    plan = _candidates(left, right, template, target, left_on, right_on, k, threshold, all_pairs, keep_all,
                       score, suffix, engine, embed_model, block_rows, options)
    answered = predict(plan.pairs, engine, model, template, target, **plan.call)
    added = [c for c in answered.columns if c not in plan.pairs.columns]
    joined = _joined(left, right, plan.found, suffix, {score: plan.found.score} if plan.scored else {})
    if _library(joined) == "polars":
        import polars as pl

        joined = pl.concat([joined, answered.select(added)], how="horizontal")
        return joined if keep_all else joined.filter(pl.col(target).cast(pl.String) == "yes")
    for name in added:
        joined[name] = answered[name].array
    return joined if keep_all else joined[joined[target].astype("string") == "yes"].reset_index(drop=True)


def sem_join_estimate(left: Any, right: Any, engine: Any, model: str | None, template: str | Template,
                      target: str = "match", *, left_on: str | None = None, right_on: str | None = None,
                      k: int = 5, threshold: float | None = None, all_pairs: bool = False,
                      score: str = "similarity", suffix: str = "_right", embed_model: str | None = None,
                      block_rows: int = BLOCK_ROWS, latency_s: float = 1.0, completion_tokens: int | None = None,
                      **options: Any) -> SemJoinEstimate:
    """The candidate pairs a ``sem_join`` with these arguments would ask about, against ``n * m``,
    and ``dfllm.estimate``'s requests, tokens, time and cost for them. Sends no question (text
    columns given with ``embed_model`` are embedded, which is sent)."""
    plan = _candidates(left, right, template, target, left_on, right_on, k, threshold, all_pairs, True,
                       score, suffix, engine, embed_model, block_rows, options)
    counted = estimate(plan.pairs, engine, model, template, target, latency_s=latency_s,
                       completion_tokens=completion_tokens, **plan.call)
    return SemJoinEstimate(len(plan.found.left), len(left) * len(right), counted)


def _candidates(left: Any, right: Any, template: Any, target: Any, left_on: Any, right_on: Any, k: Any,
                threshold: Any, all_pairs: bool, keep_all: bool, score: str, suffix: str, engine: Any,
                embed_model: str | None, block_rows: Any, options: dict[str, Any]) -> _Candidates:
    """Everything checked (every problem at once), then the candidate pairs and the frame to ask about."""
    problems = _frame_problems(left, right, "sem_join") + _number_problems(k, threshold, block_rows)
    if problems:
        raise ParameterError(problems)
    parsed = template if isinstance(template, Template) else Template(template)
    if embed_model is not None:
        left, left_on = _embedded(left, left_on, engine, embed_model, {})
        right, right_on = _embedded(right, right_on, engine, embed_model, {})
    fields, problems = _template_fields(parsed, left, right)
    problems += _pair_problems(left, right, left_on, right_on, all_pairs)
    problems += _answer_problems(options, keep_all)
    scored = left_on is not None and right_on is not None
    problems += _clash_problems(left, right, suffix, [*([score] if scored else []), str(target)])
    if problems:
        raise ParameterError(problems)
    found = (_every_pair(left, right, left_on, right_on) if all_pairs else
             matches(_arrow(left, left_on), _arrow(right, right_on), int(k), threshold=threshold,
                     block_rows=int(block_rows)))
    call = dict(options)
    if "choices" not in call and "schema" not in call:
        call.update(choices=_YES_NO, system=call.get("system") or _JUDGE_SYSTEM)
    return _Candidates(found, scored, _pairs_frame(left, right, found, fields), call)


def _template_fields(template: Template, left: Any, right: Any) -> tuple[list[tuple[str, str]], list[str]]:
    """((side, column) for each placeholder, problems): each must read ``{{left.x}}`` or ``{{right.y}}``."""
    fields, problems = [], []
    for field in template.fields:
        side, _, name = field.partition(".")
        if side not in ("left", "right") or not name:
            problems.append(f"The template's {{{{{field}}}}} names no side: write {{{{left.{field}}}}} or "
                            f"{{{{right.{field}}}}} for a column of the left or right frame.")
            continue
        names = _columns(left if side == "left" else right)
        if name not in names:
            problems.append(f"The template's {{{{{field}}}}} names {name!r}, which the {side} frame does not "
                            f"have.{did_you_mean(name, names)} Its columns: {names}.")
        fields.append((side, name))
    if not template.fields:
        problems.append("The template names no cells: write {{left.column}} and {{right.column}} in it.")
    return fields, problems


def _pair_problems(left: Any, right: Any, left_on: Any, right_on: Any, all_pairs: bool) -> list[str]:
    pairs = len(left) * len(right)
    if all_pairs:
        problems = [] if pairs <= ALL_PAIRS_LIMIT else [
            f"all_pairs=True would ask {pairs:,} questions ({len(left):,} x {len(right):,} rows), over the "
            f"limit of {ALL_PAIRS_LIMIT:,}: leave all_pairs off and give left_on= and right_on= vector "
            "columns, so each left row asks about its k most similar right rows."]
        if (left_on is None) != (right_on is None):
            problems.append("Give both left_on and right_on (to add the similarity column), or neither.")
        return problems + (_vector_problems(left, right, left_on, right_on) if left_on is not None
                           and right_on is not None else [])
    if left_on is None or right_on is None:
        return ["sem_join picks candidate pairs by similarity: give left_on= and right_on= (vector columns, "
                "or text columns with embed_model=), or all_pairs=True for small frames."]
    return _vector_problems(left, right, left_on, right_on)


def _answer_problems(options: dict[str, Any], keep_all: bool) -> list[str]:
    if keep_all:
        return []
    if "schema" in options or ("choices" in options and "yes" not in list(options["choices"] or [])):
        return ["sem_join keeps the pairs answered \"yes\": with a schema, or choices without \"yes\", pass "
                "keep_all=True to get every candidate pair with its answer."]
    return []


def _every_pair(left: Any, right: Any, left_on: str | None, right_on: str | None) -> Matches:
    n, m = len(left), len(right)
    rows, cols = np.repeat(np.arange(n, dtype=np.intp), m), np.tile(np.arange(m, dtype=np.intp), n)
    if left_on is None or right_on is None:
        return Matches(rows, cols, np.zeros(0, np.float32))
    left_unit, left_valid = vectors(_arrow(left, left_on))
    right_unit, right_valid = vectors(_arrow(right, right_on))
    cosine = np.einsum("ij,ij->i", left_unit[rows], right_unit[cols]).astype(np.float32)
    cosine[~(left_valid[rows] & right_valid[cols])] = np.nan
    return Matches(rows, cols, cosine)


def _pairs_frame(left: Any, right: Any, found: Matches, fields: list[tuple[str, str]]) -> Any:
    """The template's cells per candidate pair, as columns ``left.x`` / ``right.y``, in the left's library."""
    library = _library(left) or "pandas"
    right = _in_library(right, library)
    wanted = list(dict.fromkeys(fields))
    parts = {side: _take((left if side == "left" else right).loc[:, [n for s, n in wanted if s == side]]
                         if library == "pandas" else
                         (left if side == "left" else right).select([n for s, n in wanted if s == side]),
                         found.left if side == "left" else found.right) for side in ("left", "right")}
    named = [_renamed(parts[side], {n: f"{side}.{n}" for s, n in wanted if s == side}) for side in ("left", "right")]
    if library == "polars":
        import polars as pl

        return pl.concat(named, how="horizontal")
    import pandas as pd

    return pd.concat(named, axis=1)
