"""Run one application: `python -m videodb.services.serve upload|metadata|streaming --config F`.

supervisord runs this for each service; its output is the service's log ('platform.sh logs
upload')."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from videodb import pgenv
from videodb.config import ServiceName
from videodb.errors import VideoDBError
from videodb.services import metadata, streaming, upload
from videodb.services.runtime import SERVICES, AppConfig

BUILDERS = {
    "upload": upload.build_app,
    "metadata": metadata.build_app,
    "streaming": streaming.build_app,
}


class QuietHealthChecks(logging.Filter):
    """HAProxy asks /healthz every second: keep those answers out of the access log (unless
    they fail)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 5:
            path, status = str(args[2]), args[4]
            return not (path in ("/healthz", "/readyz") and status == 200)
        return True


def build(service: ServiceName, config: AppConfig) -> FastAPI:
    return BUILDERS[service](config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m videodb.services.serve")
    parser.add_argument("service", choices=SERVICES)
    parser.add_argument("--config", type=Path, required=True, help="conf/apps.json")
    args = parser.parse_args(argv)
    pgenv.scrub()  # the data layer's connections take nothing from PGPASSWORD, PGSERVICE...
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = AppConfig.load(args.config)
        app = build(args.service, config)
    except VideoDBError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("uvicorn.access").addFilter(QuietHealthChecks())
    uvicorn.run(
        app,
        host=config.host,
        port=config.ports[args.service],
        log_level="info",
        proxy_headers=True,
        forwarded_allow_ips="127.0.0.1",
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
