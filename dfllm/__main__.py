"""``python -m dfllm``: the ``dfllm`` command."""

from dfllm.cli import main

raise SystemExit(main())
