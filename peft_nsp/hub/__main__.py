# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""``python -m peft_nsp.hub``: push a run's stages, or set up a run that continues from a stage.

The token comes from ``HF_TOKEN`` or ``hf auth login``, never from the command line.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import httpx2
from huggingface_hub import set_client_factory
from huggingface_hub.utils._http import hf_request_event_hook

from .push import DEFAULT_PUSH_TIMEOUT, HubPushError, push_with_deadline
from .resume import materialize_stage


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m peft_nsp.hub", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    push = commands.add_parser("push", help="push every finished stage of OUTPUT_DIR not on the Hub yet")
    push.add_argument("output_dir", help="the `output_dir` of a class-incremental run")
    push.add_argument("--hub_model_id", required=True, help="the model repository, created if missing")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--space", help="a Space running the demo on this repository: the pushed cards link it")
    push.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_PUSH_TIMEOUT,
        help="give up (exit 1, nothing lost; re-run to resume) after this many seconds",
    )
    materialize = commands.add_parser("materialize", help="make OUTPUT_DIR a run resuming after a stage")
    materialize.add_argument("source", help="a Hub model id or a local stage folder `.../tasks/task-<t>`")
    materialize.add_argument("output_dir", help="the new run's `output_dir`")
    materialize.add_argument("--revision", help="Hub revision, e.g. `task-3` (the model after task 3, from 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # This process is ours: give every Hub request a timeout (huggingface_hub's default client has none).
    set_client_factory(
        lambda: httpx2.Client(
            event_hooks={"request": [hf_request_event_hook]}, follow_redirects=True, timeout=httpx2.Timeout(60.0)
        )
    )
    if args.command == "push":
        try:
            pushed = push_with_deadline(
                args.output_dir,
                args.hub_model_id,
                timeout=args.timeout,
                private=args.private or None,
                space_id=args.space,
            )
        except (HubPushError, ValueError) as error:
            raise SystemExit(str(error)) from error
        for stage in pushed:
            print(f"{stage.revision}: {stage.action} ({stage.commit})")
    else:
        try:
            print(materialize_stage(args.source, args.output_dir, revision=args.revision))
        except ConnectionError as error:
            raise SystemExit(str(error)) from error


if __name__ == "__main__":
    main()
