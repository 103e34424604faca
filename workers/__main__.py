"""``python -m workers host`` runs this machine's host worker; ``... control`` a control
worker (any number of them: the periodic tasks run once per tick across all, see
workers/control/scheduler.py). Settings are read here, once, from the environment."""

from __future__ import annotations

import argparse
import logging
import os

from shared.settings import Settings
from shared.tasks import CONTROL_QUEUE, host_queue
from workers.control.app import create_control_app
from workers.host.app import create_host_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m workers")
    parser.add_argument("role", choices=["host", "control"])
    args = parser.parse_args()
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s",
    )
    common = [
        "--pool",
        "threads",
        "--loglevel",
        settings.log_level,
        "--without-mingle",
        "--without-gossip",
    ]
    if args.role == "host":
        app, _ = create_host_app(settings)
        app.worker_main(
            [
                "worker",
                "-Q",
                host_queue(settings.host_id),
                "-n",
                f"host-{settings.host_id}@%h",
                "-c",
                str(settings.worker_concurrency),
                *common,
            ]
        )
    else:
        control = create_control_app(settings)
        # No -B: Celery beat would be a child process that outlives a killed worker and a
        # second scheduler beside another control worker's. The pid tells apart several
        # control workers of one machine.
        control.worker_main(
            [
                "worker",
                "-Q",
                CONTROL_QUEUE,
                "-n",
                f"control-{os.getpid()}@%h",
                "-c",
                "2",
                *common,
            ]
        )


if __name__ == "__main__":
    main()
