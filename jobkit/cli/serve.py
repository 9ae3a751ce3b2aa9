"""``jobkit serve`` (the HTTP API) and ``jobkit demo``."""

from __future__ import annotations

import argparse
import json
import signal
from typing import Any

from ..errors import JobkitError
from .args import import_options, int_type, positive
from .common import EXIT_OK, UsageError, import_modules, opened, settings_of
from .registry import command


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    p.add_argument("--port", type=int_type(0, "", 65535), default=8000,
                   help="default 8000 (0: any free port)")
    p.add_argument("--concurrency", type=positive, default=None,
                   help="the in-process worker's concurrency (default $JOBKIT_CONCURRENCY)")
    p.add_argument("--dev-endpoints", action="store_true",
                   help="enable POST /jobs/process (like JOBKIT_DEV_ENDPOINTS=true)")
    import_options(p)


@command("serve", "run the HTTP API with uvicorn (and a worker when "
                  "JOBKIT_WORKER_ENABLED is true)", _serve_arguments, json_out=False)
async def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..api import create_app
    except ImportError as exc:
        raise UsageError(f"jobkit serve needs the api extra ({exc}): "
                         "pip install -e '.[api]' (from the jobkit checkout)") from None
    settings = settings_of(args, concurrency=args.concurrency,
                           dev_endpoints=True if args.dev_endpoints else None)
    import_modules(args.imports)
    async with opened(args, create=True, settings=settings) as runner:
        app = create_app(settings, runner=runner)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_config=None,
                                lifespan="on", server_header=False)
        server = uvicorn.Server(config)
        # uvicorn re-raises a caught SIGTERM once it has shut down; handle it so that a
        # graceful stop exits 0 (SIGINT still ends with 130, as Ctrl-C should).
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(sig: int, frame: Any) -> None:
            server.handle_exit(sig, frame)

        signal.signal(signal.SIGTERM, on_sigterm)
        try:
            await server.serve()
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise JobkitError(f"the server could not start on {args.host}:{args.port} "
                                  "(see the log above)") from None
        finally:
            signal.signal(signal.SIGTERM, previous)
    return EXIT_OK


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", default=None,
                   help="default: a fresh SQLite file in a temporary folder")
    p.add_argument("--concurrency", type=positive, default=5,
                   help="jobs at once (default 5)")
    p.add_argument("--plot", default=None, help="write a PNG of the clip scores here")


@command("demo", "upload sample videos, drain, print the outcome", _demo_arguments, db=False)
async def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    result = await run_demo(args.database_url, concurrency=args.concurrency,
                            plot_path=args.plot, quiet=args.json)
    if args.json:
        print(json.dumps(result, default=str))
    return EXIT_OK
