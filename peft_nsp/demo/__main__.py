# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""``python -m peft_nsp.demo <run folder | stage folder | user/repo[@task-<t>]>``: the browser demo on 127.0.0.1;
``python -m peft_nsp.demo space <user/repo> --output <folder>``: the files of a Hub Space that runs it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["space"]:
        return _space(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m peft_nsp.demo",
        description="A browser demo of a continually trained model, on 127.0.0.1. `python -m peft_nsp.demo space "
        "--help` writes a Hub Space instead.",
    )
    parser.add_argument(
        "source",
        help="a run's output_dir, a stage folder (`<output_dir>/tasks/task-<t>`), or a Hub "
        "repository `user/repo` or `user/repo@task-<t>`",
    )
    parser.add_argument("--port", type=int, help="port on 127.0.0.1 (default: the first free one from 7860)")
    parser.add_argument(
        "--teach_dir",
        help="where tasks taught in the browser are written when the source is not a run on this machine "
        "(default: peft-nsp-demo/<repository name>)",
    )
    parser.add_argument("--epochs", type=int, default=3, help="the teach tab's default epochs (default: 3)")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads of the app (default: torch's); 1 keeps classification fast on a CPU other processes "
        "share (benchmarks/demo_latency.py)",
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error("`--threads` must be ≥ 1.")
        import torch

        torch.set_num_threads(args.threads)
    from .app import build_demo, launch  # gradio loads only here: `--help` works without the extra

    teach_dir = args.teach_dir or f"peft-nsp-demo/{args.source.split('@')[0].rstrip('/').rsplit('/', 1)[-1]}"
    try:
        demo = build_demo(args.source, teach_dir, epochs=args.epochs)
    except (ValueError, FileNotFoundError, ConnectionError) as error:
        parser.error(str(error))
    launch(demo, args.port)


def _space(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m peft_nsp.demo space",
        description="Write app.py, requirements.txt and README.md of a Hugging Face Space that runs the demo on a "
        "published repository. Then: `hf upload <user>/<space> <folder> --repo-type space`.",
    )
    parser.add_argument("source", help="the model repository (`user/repo` or `user/repo@task-<t>`)")
    parser.add_argument("--output", required=True, help="the Space's folder")
    parser.add_argument(
        "--package", help="pip requirement installing peft-nsp (default: peft-nsp[demo,offline]==<this version>)"
    )
    args = parser.parse_args(argv)
    from .space import write_space

    try:
        files = write_space(args.source, args.output, args.package)
    except ValueError as error:
        parser.error(str(error))
    print("\n".join(str(path) for path in files))
    print(f"Publish it with: hf upload <user>/<space> {args.output} --repo-type space")


if __name__ == "__main__":
    main()
