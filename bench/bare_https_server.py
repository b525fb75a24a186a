"""The HTTP ceiling: a bare Starlette app on uvicorn over HTTPS, answering fixed bytes.

It serves the osquery paths the benchmark saturates with the bytes Quarry would answer when
there is nothing to do (`{"queries":{}}` for a distributed read, the config for a config
fetch, `{}` for a log POST), with no authentication, no state and no other hop. Run with the
same certificate and worker count as the gateway under test, its requests/s are what
Starlette, uvicorn and TLS alone allow on this machine. (The gateway no longer runs on
uvicorn, docs/adr/0016-own-http-server.md: this is the yardstick of a common Python stack,
which the gateway's own server can exceed.)

    python -m bench.bare_https_server --port P --cert C --key K [--workers N] [--config FILE]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

CONFIG_FILE_ENV = "QUARRY_BENCH_BARE_CONFIG_FILE"  # how uvicorn's workers get the config
EMPTY_DISTRIBUTED_READ = b'{"queries":{}}'
EMPTY_OBJECT = b"{}"

# Fleet's paths and the short ones from osquery's docs, as the gateway serves them.
DISTRIBUTED_READ_PATHS = ("/api/v1/osquery/distributed/read", "/distributed/read")
CONFIG_PATHS = ("/api/v1/osquery/config", "/config")
LOG_PATHS = ("/api/v1/osquery/log", "/logger", "/log")


def fixed_answer(content: bytes) -> Callable[[Request], Awaitable[Response]]:
    async def answer(request: Request) -> Response:
        await request.body()  # the request is read in full, as the gateway does
        return Response(content, media_type="application/json")

    return answer


def create_app(config_bytes: bytes = EMPTY_OBJECT) -> Starlette:
    answers = [
        (DISTRIBUTED_READ_PATHS, EMPTY_DISTRIBUTED_READ),
        (CONFIG_PATHS, config_bytes),
        (LOG_PATHS, EMPTY_OBJECT),
    ]
    routes = [
        Route(path, fixed_answer(content), methods=["POST", "GET"])
        for paths, content in answers
        for path in paths
    ]
    return Starlette(routes=routes)


def app_from_environment() -> Starlette:
    """uvicorn's factory: each worker process reads the config file named in the env."""
    config_file = os.environ.get(CONFIG_FILE_ENV, "")
    return create_app(Path(config_file).read_bytes() if config_file else EMPTY_OBJECT)


def serve(port: int, cert: Path, key: Path, workers: int = 1, host: str = "127.0.0.1") -> None:
    # The uvicorn settings the gateway had before it served HTTP itself.
    uvicorn.run(
        "bench.bare_https_server:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        log_config=None,
        access_log=False,
        timeout_keep_alive=75,
        server_header=False,
    )


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True, help="server certificate (PEM)")
    parser.add_argument("--key", type=Path, required=True, help="its private key (PEM)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--config", type=Path, help="file whose bytes answer config fetches")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    if arguments.config is not None:
        os.environ[CONFIG_FILE_ENV] = str(arguments.config.resolve())
    serve(arguments.port, arguments.cert, arguments.key, arguments.workers, arguments.host)


if __name__ == "__main__":
    main()
