# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""What every benchmark recipe runs: parse, load data and model, train the task sequence, compare with the paper."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, PreTrainedModel

from .._io import write_atomically
from ..continual.augment import AuthorsTrainTransform, EvalTransform
from ..continual.paper import comparison_table
from ..continual.stages import read_progress, stage_dir, training_dir
from ..hub import HubPushError, HubStageStore, hub_unreachable, push_to_hub
from ..timm_vit import is_timm_checkpoint, load_timm_vit
from .arguments import ModelArguments, RecipeArguments, parse_recipe_arguments
from .data import load_recipe_data


if TYPE_CHECKING:
    from ..loop import ContinualResult

SUMMARY_FILE = "summary.json"


def run_recipe(benchmark: str, argv: Sequence[str] | None = None) -> ContinualResult:
    """Run ``benchmark`` (a key of `BENCHMARKS`) with the command line ``argv`` (default: ``sys.argv[1:]``)."""
    args = parse_recipe_arguments(benchmark, argv)
    from ..loop import (  # the training stack (and matplotlib): not for `--help`
        ClassIncrementalConfig,
        run_class_incremental,
    )

    training = args.training
    push = training.push_to_hub and training.process_index == 0
    if push and hub_unreachable(training.hub_model_id):
        raise SystemExit(
            f"`--push_to_hub`: the Hugging Face Hub cannot be reached (no network, or HF_HUB_OFFLINE is set) to "
            f"publish `{training.hub_model_id}`. Train without `--push_to_hub` and publish the run later where the "
            f"Hub is reachable: `python -m peft_nsp.hub push {training.output_dir} --hub_model_id "
            f"{training.hub_model_id}`."
        )
    if training.process_index == 0 and (resuming := resume_message(training.output_dir)):
        print(resuming, flush=True)
    with training.main_process_first(desc="loading the data"):  # one process builds the datasets cache
        data = load_recipe_data(args.data, training.seed, args.benchmark, training.image_column, training.label_column)
    base_model, processor, size, mean, std = load_backbone(args.model, args.data.image_size)
    clip = args.model.classifier == "text"
    spec = args.benchmark
    training.image_column, training.label_column = data.image_column, data.label_column
    run = ClassIncrementalConfig(
        num_tasks=args.num_tasks,
        joint=args.model.joint,
        continue_from=args.model.continue_from,
        run_info={
            "benchmark": spec.name,
            "dataset": args.data.dataset,
            "base_model": args.model.model_name_or_path,
            "image_size": size,
            "num_tasks": args.num_tasks,
        },
    )
    result = run_class_incremental(
        base_model,
        args.peft_config,
        training,
        run,
        data.train,
        data.test,
        train_transform=AuthorsTrainTransform(
            size,
            mean,
            std,
            policy=spec.autoaugment_policy,
            interpolation=spec.crop_interpolation,
            auto_augment=args.data.auto_augment,
        ),
        eval_transform=EvalTransform(size, mean, std, interpolation="bicubic", shorter_side=True)
        if clip
        else EvalTransform(size, mean, std, resize_to=spec.eval_resize, interpolation=spec.eval_interpolation),
        tokenizer=AutoTokenizer.from_pretrained(args.model.model_name_or_path) if clip else None,
        processing_class=processor,
        stage_store=HubStageStore(training.hub_model_id, private=training.hub_private_repo, token=training.hub_token)
        if push
        else None,
    )
    if training.process_index == 0:
        print(write_summary(result, args), flush=True)
    if push:  # whatever a push after some task could not upload; stops (run intact) if it still fails
        try:
            push_to_hub(
                result.output_dir, training.hub_model_id, private=training.hub_private_repo, token=training.hub_token
            )
        except HubPushError as error:  # its message says what happened and how to resume: once, no traceback
            raise SystemExit(str(error)) from None
    return result


def resume_message(output_dir: str | os.PathLike) -> str | None:
    """What re-running a recipe in ``output_dir`` will do with the run there (``None``: no task finished yet)."""
    record = read_progress(output_dir)
    if record is None:
        return None
    finished, planned = record.finished_tasks, len(record.tasks)
    if finished >= planned:
        return f"{output_dir} holds a finished run of {planned} tasks: nothing to train, its results follow."
    checkpoint = any(training_dir(output_dir, finished).glob("checkpoint-*"))
    return (
        f"Resuming {output_dir} after task {finished} of {planned} (last stage: "
        f"{stage_dir(output_dir, finished - 1)}); task-{finished} continues "
        f"{'from its last Trainer checkpoint' if checkpoint else 'from its start'}."
    )


def load_backbone(model: ModelArguments, image_size: int | None) -> tuple[PreTrainedModel, Any, int, list, list]:
    """The pre-trained model (a timm-format checkpoint is converted), its image processor, the input side and the
    normalisation."""
    name = model.model_name_or_path
    try:
        if is_timm_checkpoint(name):
            backbone, processor = load_timm_vit(name, attn_implementation=model.attn_implementation)
        else:
            processor = AutoImageProcessor.from_pretrained(name)
            backbone = AutoModel.from_pretrained(name, attn_implementation=model.attn_implementation)
    except (OfflineModeIsEnabled, LocalEntryNotFoundError, ConnectionError) as error:
        raise ValueError(_offline_message(name, error)) from error
    except OSError as error:
        if hub_unreachable(name):
            raise ValueError(_offline_message(name, error)) from error
        raise ValueError(
            f"`{name}` could not be loaded as a model with an image processor (preprocessor_config.json gives the "
            f"input size and normalisation): {error}. Save one next to the weights, e.g. "
            "`ViTImageProcessor(size={'height': 224, 'width': 224}).save_pretrained(path)`."
        ) from error
    native = getattr(backbone.config, "vision_config", backbone.config).image_size
    processed = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    size = image_size or processed.get("height") or processed.get("shortest_edge") or native
    if size != native and backbone.config.model_type in ("vit", "deit"):
        raise ValueError(
            f"`--image_size {size}` but `{name}` has position embeddings for {native} px: drop `--image_size`, or use "
            "a checkpoint converted to that size."
        )
    return backbone, processor, size, list(processor.image_mean), list(processor.image_std)


def _offline_message(name: str, error: Exception) -> str:
    return (
        f"`{name}` is not on this machine and the Hugging Face Hub cannot be reached (no network, or HF_HUB_OFFLINE "
        f"is set): {type(error).__name__}. Download it where there is a network (`hf download {name}`), or pass a "
        "local checkpoint folder with `--model_name_or_path /path/to/model`."
    )


def write_summary(result: ContinualResult, args: RecipeArguments) -> str:
    """Write ``summary.json`` (metrics + the paper's comparison; strict JSON) next to the run; return the printout."""
    metrics = result.metrics
    forgetting = metrics.forgetting if metrics.num_tasks > 1 else None
    table = comparison_table(metrics.final_accuracy, forgetting, args.benchmark.name, args.method)
    matrix = metrics.accuracy_matrix
    summary = {
        "benchmark": args.benchmark.name,
        "method": args.method,
        "metrics": metrics.summary(json_safe=True),
        "accuracy_matrix": [[float(matrix[t, j]) for j in range(t + 1)] for t in range(metrics.num_tasks)],
        "output_dir": str(result.output_dir),
    }
    text = json.dumps(summary, indent=2, allow_nan=False)
    write_atomically(Path(result.output_dir) / SUMMARY_FILE, text.encode())
    heading = f"{args.method} on {args.benchmark.name}, {metrics.num_tasks} task(s):"
    return f"\n{heading}\n{metrics.format_table()}\n\n{table}"
