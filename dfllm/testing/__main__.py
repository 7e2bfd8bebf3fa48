"""``python -m dfllm.testing --latency-ms 50 [--rpm 3000 --rpm-shape fixed] [--random-429 0.05]``: a fake provider.

Images and embeddings: ``--no-images`` (a text-only model), ``--max-image-bytes``,
``--embedding-dimension 256 --embedding-similarity words``.

Prints its base URL on the first line of stdout, then serves on 127.0.0.1 until terminated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from aiohttp import web

from dfllm.testing._batches import BatchOptions, fail_lines
from dfllm.testing._embeddings import SIMILARITIES, EmbeddingOptions
from dfllm.testing._images import MAX_IMAGE_BYTES
from dfllm.testing._limits import HEADER_STYLES, SHAPES
from dfllm.testing._responders import BODY_RESPONDERS, RESPONDERS
from dfllm.testing._server import FakeProviderApp


async def _serve(args: argparse.Namespace) -> None:
    app = FakeProviderApp(
        responder=args.responder,
        latency_s=args.latency_ms / 1000,
        api_key=args.api_key,
        rpm=args.rpm,
        rpm_burst=args.rpm_burst,
        rpm_shape=args.rpm_shape,
        rpm_window_s=args.rpm_window_s,
        ratelimit_headers="none" if args.no_ratelimit_headers else args.ratelimit_headers,
        advertised_rpm_scale=args.advertised_rpm_scale,
        random_429=args.random_429,
        random_seed=args.random_seed,
        record=False,  # a long benchmark must not grow the server's memory
        images=not args.no_images,
        max_image_bytes=args.max_image_bytes,
        embeddings=EmbeddingOptions(dimension=args.embedding_dimension, similarity=args.embedding_similarity),
        batch=BatchOptions(
            polls_to_complete=args.batch_polls_to_complete,
            max_requests=args.batch_max_requests,
            max_bytes=args.batch_max_bytes,
            line_script=fail_lines(share=args.batch_fail_share, seed=args.random_seed or 0, times=1)
            if args.batch_fail_share else None,
        ),
    )
    runner = web.AppRunner(app.build(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=4096)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"http://127.0.0.1:{port}/v1", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m dfllm.testing", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--rpm", type=float, default=None, help="server-side request cap per minute")
    parser.add_argument("--rpm-burst", type=float, default=None)
    parser.add_argument("--rpm-shape", choices=SHAPES, default="bucket",
                        help="the cap's shape: a token bucket, a sliding or a fixed window (see --rpm-window-s)")
    parser.add_argument("--rpm-window-s", type=float, default=60.0,
                        help="a window's length: it holds rpm * this / 60 requests")
    parser.add_argument("--ratelimit-headers", choices=HEADER_STYLES, default="openai",
                        help="the headers about the cap: OpenAI's (with reset), LiteLLM's proxy's (no reset), none")
    parser.add_argument("--no-ratelimit-headers", action="store_true",
                        help="enforce the cap without x-ratelimit-* headers (only 429 + Retry-After)")
    parser.add_argument("--advertised-rpm-scale", type=float, default=1.0,
                        help="x-ratelimit-limit-requests says rpm times this (a header in other units)")
    parser.add_argument("--random-429", type=float, default=0.0,
                        help="share of requests answered 429 + Retry-After: 1 regardless of the cap")
    parser.add_argument("--random-seed", type=int, default=None)
    parser.add_argument("--batch-polls-to-complete", type=int, default=3,
                        help="retrieves a batch job takes from creation to completed")
    parser.add_argument("--batch-max-requests", type=int, default=50_000, help="requests per batch input file")
    parser.add_argument("--batch-max-bytes", type=int, default=200_000_000, help="bytes per batch input file")
    parser.add_argument("--batch-fail-share", type=float, default=0.0,
                        help="share of batch lines answered 500 the first time they are submitted")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--responder", default="smart", choices=sorted([*RESPONDERS, *BODY_RESPONDERS]))
    parser.add_argument("--no-images", action="store_true", help="a text-only model: image parts answered 400")
    parser.add_argument("--max-image-bytes", type=int, default=MAX_IMAGE_BYTES, help="a data URL's decoded bytes")
    parser.add_argument("--embedding-dimension", type=int, default=8, help="the full length of a vector")
    parser.add_argument("--embedding-similarity", choices=SIMILARITIES, default="none",
                        help="which texts get near vectors: none, equal once normalised, sharing words")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
