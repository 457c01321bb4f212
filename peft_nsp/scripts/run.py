# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""What every benchmark recipe runs: parse, load data and model, train the task sequence, compare with the paper."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, PreTrainedModel

from .._io import write_atomically
from ..continual.augment import EvalTransform, PaperTrainTransform
from ..continual.loop import ContinualResult, run_class_incremental
from ..continual.paper import comparison_table
from ..hub import push_after_each_task, push_to_hub
from .arguments import ModelArguments, RecipeArguments, parse_recipe_arguments
from .data import load_recipe_data

SUMMARY_FILE = "summary.json"


def run_recipe(benchmark: str, argv: Sequence[str] | None = None) -> ContinualResult:
    """Run ``benchmark`` (a key of `BENCHMARKS`) with the command line ``argv`` (default: ``sys.argv[1:]``)."""
    args = parse_recipe_arguments(benchmark, argv)
    training = args.training
    push = training.push_to_hub and training.process_index == 0
    with training.main_process_first(desc="loading the data"):  # one process builds the datasets cache
        data = load_recipe_data(args.data, training.seed)
    base_model, image_size, mean, std = load_backbone(args.model, args.data.image_size)
    result = run_class_incremental(
        base_model,
        args.model.peft_config(ln_loss_weight=1.0, benchmark=args.benchmark),
        args.training,
        data.train,
        data.test,
        num_tasks=args.num_tasks,
        train_transform=PaperTrainTransform(image_size, mean, std, auto_augment=args.data.auto_augment),
        eval_transform=EvalTransform(image_size, mean, std),
        image_column=data.image_column,
        label_column=data.label_column,
        joint=args.model.joint,
        run_info={
            "benchmark": args.benchmark.name,
            "method": args.method,
            "dataset": args.data.dataset,
            "base_model": args.model.model_name_or_path,
            "image_size": image_size,
            "num_tasks": args.num_tasks,
        },
        tokenizer=AutoTokenizer.from_pretrained(args.model.model_name_or_path) if args.model.classifier == "text" else None,
        refinement=args.refinement if args.model.head_refinement else None,
        on_stage_saved=push_after_each_task(
            training.hub_model_id, private=training.hub_private_repo, token=training.hub_token
        )
        if push
        else None,
    )
    if training.process_index == 0:
        print(write_summary(result, args), flush=True)
    if push:  # whatever a push after some task could not upload; raises (run intact) if it still fails
        push_to_hub(result.output_dir, training.hub_model_id, private=training.hub_private_repo, token=training.hub_token)
    return result


def load_backbone(model: ModelArguments, image_size: int | None) -> tuple[PreTrainedModel, int, list, list]:
    """The pre-trained model, the input side, and the normalisation of its image processor."""
    try:
        processor = AutoImageProcessor.from_pretrained(model.model_name_or_path)
    except OSError as error:
        raise ValueError(
            f"`{model.model_name_or_path}` has no image processor (preprocessor_config.json), which gives the "
            "input size and normalisation: save one next to the weights, e.g. "
            "`ViTImageProcessor(size={'height': 224, 'width': 224}).save_pretrained(path)`."
        ) from error
    backbone = AutoModel.from_pretrained(model.model_name_or_path, attn_implementation=model.attn_implementation)
    native = getattr(backbone.config, "vision_config", backbone.config).image_size
    processed = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    size = image_size or processed.get("height") or processed.get("shortest_edge") or native
    if size != native and backbone.config.model_type in ("vit", "deit"):
        raise ValueError(
            f"`--image_size {size}` but `{model.model_name_or_path}` has position embeddings for {native} px: "
            "drop `--image_size`, or use a checkpoint converted to that size."
        )
    return backbone, size, list(processor.image_mean), list(processor.image_std)


def write_summary(result: ContinualResult, args: RecipeArguments) -> str:
    """Write ``summary.json`` (metrics + the paper's comparison) next to the run; return the printed summary."""
    metrics = result.metrics
    forgetting = metrics.forgetting if metrics.num_tasks > 1 else None
    table = comparison_table(metrics.final_accuracy, forgetting, args.benchmark.name, args.method)
    summary = {
        "benchmark": args.benchmark.name,
        "method": args.method,
        "metrics": {name: None if math.isnan(value) else value for name, value in metrics.summary().items()},
        "accuracy_matrix": metrics.accuracy_matrix.tolist(),
        "output_dir": str(result.output_dir),
    }
    write_atomically(Path(result.output_dir) / SUMMARY_FILE, json.dumps(summary, indent=2, default=str).encode())
    return f"\n{args.method} on {args.benchmark.name}, {metrics.num_tasks} task(s):\n{metrics.format_table()}\n\n{table}"
