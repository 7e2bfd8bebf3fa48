"""The drive stage: each driver a thin use of plan -> run -> write back.

``eager`` (``predict`` / ``apredict`` on an in-memory frame), ``stream`` (one session and one
executor over many batches: files, a LazyFrame's collect), ``polars_lazy`` and ``dask`` (lazy
frames, answered when computed), ``estimate`` (the plan's numbers, nothing sent) and ``verbs``
(``classify``, ``extract``, ``filter`` over ``predict``). Drivers register themselves with
``dfllm.frames`` (lazy kinds, accessors); this package imports none of them, so a frame library
that is not installed is never loaded.
"""
