# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""``peft-nsp-classify``: class names and probabilities for images, from a VPT-NSP² stage.

    peft-nsp-classify runs/imagefolder-nsp-seed2024/tasks/task-4 cat.png holidays/ [--top_k 5] [--json]
    peft-nsp-classify me/vpt-nsp-cifar100-10@task-3 cat.png        # a Hub revision (or: --revision task-3)
    python -m peft_nsp.classify ...                                 # the same, without the console script

The model is what `pipeline("image-classification", model=<stage folder>)` loads after ``import peft_nsp``: the
base model named in the adapter, the prompts and heads, the class names and the image processor saved with the stage
(a Hub revision is downloaded first). A run's ``output_dir`` stands for its last finished stage; a folder stands for
the images under it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import constants, snapshot_download
from PIL import Image
from transformers import logging as transformers_logging
from transformers import pipeline

from .continual.stages import read_progress, stage_dir
from .hub.store import hub_unreachable


ADAPTER_CONFIG = "adapter_config.json"

#: A prediction: ``(image path, [{"label": name, "score": probability}, ...])``, most probable first.
Prediction = tuple[str, list[dict[str, Any]]]


def resolve_model(model: str, revision: str | None = None) -> tuple[str, str | None]:
    """The stage folder or Hub repository, and its revision, that ``model`` names: a stage folder, a run's
    ``output_dir`` (its last finished stage), ``repo`` or ``repo@revision``."""
    path = Path(model).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ValueError(
                f"`--revision {revision}` selects a revision of a Hub repository, but `{model}` is a "
                "local folder: give the stage folder itself (`<output_dir>/tasks/task-<t>`)."
            )
        if (path / ADAPTER_CONFIG).is_file():
            return str(path), None
        record = read_progress(path)
        if record is not None and record.finished_tasks > 0:
            stage = stage_dir(path, record.finished_tasks - 1)
            print(f"Classifying with {stage}, the last finished stage of {model}.", file=sys.stderr)
            return str(stage), None
        raise ValueError(
            f"`{model}` holds no adapter (`{ADAPTER_CONFIG}`) and no finished run: give a stage folder "
            "(`<output_dir>/tasks/task-<t>`), a run's `output_dir`, or a Hub repository (`user/repo` "
            "or `user/repo@task-<t>`)."
        )
    if "@" in model:
        if revision is not None:
            raise ValueError(f"`{model}` names a revision and so does `--revision {revision}`: give one of them.")
        model, revision = model.rsplit("@", 1)
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ValueError(
            f"No stage folder `{model}`: give a stage folder (`<output_dir>/tasks/task-<t>`), a run's "
            "`output_dir`, or a Hub repository (`user/repo@task-<t>`)."
        )
    return model, revision


def image_files(paths: Sequence[str]) -> list[Path]:
    """The image files among ``paths``: files as given, and every image file under a folder (sorted, hidden files
    left out)."""
    suffixes = {suffix for suffix, kind in Image.registered_extensions().items() if kind in Image.OPEN}
    files = []
    for name in paths:
        path = Path(name).expanduser()
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(
                file
                for file in path.rglob("*")
                if file.is_file()
                and file.suffix.lower() in suffixes
                and not any(part.startswith(".") for part in file.relative_to(path).parts)
            )
            if not found:
                raise ValueError(f"No images in `{name}` (files ending in {', '.join(sorted(suffixes)[:6])}, …).")
            files += found
        else:
            raise ValueError(f"`{name}` does not exist: give image files or folders of images.")
    return files


def load_classifier(model: str, revision: str | None = None, device: str | None = None) -> Any:
    """`pipeline("image-classification")` for a stage folder or Hub repository (see [`resolve_model`]); this module
    is part of `peft_nsp`, whose import registered `vpt_nsp` with PEFT.

    A Hub revision is downloaded first (`snapshot_download`): given ``revision=``, transformers would also ask the
    base model's repository for that revision, which it does not have.
    """
    folder, verbosity = model, transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # a backbone base's load report lists its unused classifier (README)
    try:
        if not Path(model).is_dir():
            folder = snapshot_download(model, revision=revision)
        return pipeline("image-classification", model=folder, device=device)
    except (OSError, ValueError) as error:  # missing files and failed requests are OSErrors, a bad config a ValueError
        raise ValueError(_load_error(model, revision, folder, error)) from error
    finally:
        transformers_logging.set_verbosity(verbosity)


def classify_files(classifier: Any, files: Sequence[Path], top_k: int = 5, batch_size: int = 8) -> list[Prediction]:
    """The ``top_k`` classes of every image, reading ``batch_size`` images at a time."""
    predictions = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        answers = classifier([open_rgb(path) for path in chunk], top_k=top_k, batch_size=batch_size)
        predictions += [(str(path), answer) for path, answer in zip(chunk, answers)]
    return predictions


def format_predictions(predictions: Sequence[Prediction]) -> str:
    """One ``path  label  probability`` line per class of every image, in aligned columns."""
    rows = [(path, answer["label"], f"{answer['score']:.4f}") for path, answers in predictions for answer in answers]
    path_width = max(len(path) for path, _, _ in rows)
    label_width = max(len(label) for _, label, _ in rows)
    return "\n".join(f"{path:<{path_width}}  {label:<{label_width}}  {score}" for path, label, score in rows)


def main(argv: Sequence[str] | None = None) -> None:
    examples = __doc__.split("\n\n")[1]
    parser = argparse.ArgumentParser(
        prog="peft-nsp-classify",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Class names and probabilities for images, from a VPT-NSP² stage (a folder or a Hub revision).",
        epilog=f"examples:\n{examples}\n\nWithout a network, give a stage folder whose base model is on this "
        "machine\n(or set HF_HUB_OFFLINE=1 with both in the Hugging Face cache).",
    )
    parser.add_argument(
        "model",
        help="a stage folder (`<output_dir>/tasks/task-<t>`), a run's `output_dir` (its "
        "last stage), a Hub repository `user/repo`, or `user/repo@task-<t>`",
    )
    parser.add_argument("images", nargs="+", help="image files, or folders of images (searched recursively)")
    parser.add_argument("--revision", help="Hub revision, e.g. `task-3` (the model after task 3, counted from 0)")
    parser.add_argument("--top_k", type=int, default=5, help="classes shown per image (default: 5)")
    parser.add_argument("--json", action="store_true", help="print JSON: a list of `{image, predictions}`")
    parser.add_argument(
        "--device", help="`cpu`, `cuda`, `cuda:1`, `mps`, … (default: the first accelerator, else the CPU)"
    )
    parser.add_argument("--batch_size", type=int, default=8, help="images per forward pass (default: 8)")
    args = parser.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        parser.error("`--top_k` and `--batch_size` must be ≥ 1.")
    try:
        model, revision = resolve_model(args.model, args.revision)
        files = image_files(args.images)
        predictions = classify_files(load_classifier(model, revision, args.device), files, args.top_k, args.batch_size)
    except ValueError as error:
        parser.error(str(error))
    if args.json:
        print(json.dumps([{"image": path, "predictions": answers} for path, answers in predictions], indent=2))
    else:
        print(format_predictions(predictions))


def open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as error:  # PIL's UnidentifiedImageError included
        raise ValueError(f"`{path}` is not an image this machine can read: {error}") from error


def _load_error(model: str, revision: str | None, folder: str, error: Exception) -> str:
    """Why ``model`` did not load from ``folder`` (the stage on this machine, or still ``model``): no network,
    naming what is missing (the stage or its base model), or the loader's own message."""
    named = f"`{model}`" + (f" (revision `{revision}`)" if revision else "")
    config = Path(folder) / ADAPTER_CONFIG
    stage_here = config.is_file()
    needed = json.loads(config.read_text())["base_model_name_or_path"] if stage_here else model
    if constants.HF_HUB_OFFLINE or hub_unreachable(needed):
        what = "its base model" if stage_here else "it"
        fetch = f"hf download {needed}" + ("" if stage_here or revision is None else f" --revision {revision}")
        return (
            f"Could not load {named}: {what} (`{needed}`) is not on this machine and the Hugging Face Hub "
            "cannot be reached (offline: no network, or HF_HUB_OFFLINE is set). Where there is a network, "
            f"`{fetch}` puts it in the Hugging Face cache; copy the cache here and run with HF_HUB_OFFLINE=1."
        )
    hint = "" if Path(model).is_dir() else f" There is no local folder `{model}` either."
    return f"Could not load {named}: {error}{hint}"


if __name__ == "__main__":
    main()
