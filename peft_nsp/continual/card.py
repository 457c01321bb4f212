# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The model card of one stage, rendered from the template in ``model_cards/vpt_nsp.md`` (shipped in the package)
with [`huggingface_hub.ModelCard`]."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .._io import write_atomically
from .metrics import ContinualMetrics
from .paper import PAPER_TITLE, PAPER_URL, comparison_rows
from .stages import CARD_FILE, RunRecord, read_record, stage_revision


#: The template inside the package (a copy of `model_cards/vpt_nsp.md` in a wheel, a link to it in a checkout).
TEMPLATE_PATH = Path(__file__).resolve().with_name("model_card_template.md")
TAGS = ["peft-nsp", "vpt-nsp", "continual-learning", "class-incremental-learning", "visual-prompt-tuning"]
# adapter_config.json keys that are bookkeeping, not settings of the method
_ADAPTER_BOOKKEEPING = {
    "auto_mapping",
    "base_model_name_or_path",
    "inference_mode",
    "peft_type",
    "peft_version",
    "revision",
    "target_modules",
    "task_classes",
    "class_names",
    "task_type",
    "base_model_architecture",
}


def build_model_card(
    stage_dir: str | os.PathLike,
    repo_id: str | None = None,
    template_path: str | os.PathLike = TEMPLATE_PATH,
    space_id: str | None = None,
) -> ModelCard:
    """The model card of the stage in ``stage_dir``, for the Hub repository ``repo_id`` (or a local folder), linking
    the Space ``space_id`` that runs the browser demo on it (`python -m peft_nsp.demo space`), when there is one.

    Reads the stage's run record (``sequence.json``) and ``adapter_config.json``. ``run_info`` keys used:
    ``benchmark`` (a key of [`PAPER_RESULTS`] puts the paper's numbers next to ours), ``dataset`` (a Hub dataset
    id: `datasets` and `model-index` metadata) and ``base_model`` (a Hub model id, else the adapter's
    ``base_model_name_or_path`` when it is one).
    """
    stage_dir = Path(stage_dir)
    record = read_record(stage_dir)
    adapter = json.loads((stage_dir / "adapter_config.json").read_text())
    metrics = ContinualMetrics.from_dict(record.metrics)
    task = record.finished_tasks - 1
    base_model_path = record.run_info.get("base_model") or adapter.get("base_model_name_or_path")
    base_model = _hub_id(base_model_path)
    dataset = _hub_id(record.run_info.get("dataset"))
    benchmark = record.run_info.get("benchmark")
    model_name = repo_id.split("/")[-1] if repo_id else f"{record.method} ({stage_revision(task)})"
    measured = metrics.num_tasks > 0  # `NSPTrainer.save_model` records the tasks, not an accuracy matrix
    eval_results = _eval_results(metrics, dataset, benchmark, task) if dataset and measured else None
    card_data = ModelCardData(
        model_name=model_name if eval_results else None,  # only `model-index` has a model name on the Hub
        base_model=base_model,
        library_name="peft",
        pipeline_tag="image-classification",
        tags=TAGS,
        datasets=[dataset] if dataset else None,
        eval_results=eval_results,
    )
    summary = metrics.summary() if measured else None
    class_ids = record.class_ids
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        title=model_name,
        repo_id=repo_id,
        space_id=space_id,
        revision=stage_revision(task),
        task=task,
        num_tasks=len(record.tasks),
        method=record.method,
        base_model_class=(adapter.get("base_model_architecture") or {}).get("model_class", "AutoModel"),
        base_model_path=base_model_path,
        benchmark=benchmark,
        dataset=dataset,
        paper_url=PAPER_URL,
        paper_title=PAPER_TITLE,
        seed=record.seed,
        continued_from=record.continued_from,
        class_order=", ".join(f"{c}: {name}" for c, name in enumerate(record.class_names)),
        task_rows=[
            {
                "task": k,
                "revision": stage_revision(k),
                "classes": ", ".join(f"{_cell(name)} ({c})" for name, c in zip(names, class_ids[k])),
            }
            for k, names in enumerate(record.tasks)
        ],
        hyperparameters=record.settings,
        settings_changes=record.settings_changes,
        adapter_settings={key: value for key, value in adapter.items() if key not in _ADAPTER_BOOKKEEPING},
        matrix_rows=_matrix_rows(metrics) if measured else [],
        results=comparison_rows(
            summary["final_accuracy"],
            None if math.isnan(summary["forgetting"]) else summary["forgetting"],
            benchmark,
            f"{record.method}, after task {task} ({task + 1} of {len(record.tasks)} tasks)",
        )
        if measured
        else [],
        average_incremental_accuracy=f"{100 * summary['average_incremental_accuracy']:.2f}" if measured else None,
    )


def render_model_card(stage_dir: str | os.PathLike, repo_id: str | None = None, space_id: str | None = None) -> bytes:
    """[`build_model_card`] as the bytes of a ``README.md``."""
    return str(build_model_card(stage_dir, repo_id, space_id=space_id)).encode("utf-8")


def write_model_card(stage_dir: str | os.PathLike, repo_id: str | None = None) -> Path:
    """Render [`build_model_card`] into ``stage_dir/README.md`` atomically (replacing PEFT's generic card)."""
    return write_atomically(Path(stage_dir) / CARD_FILE, render_model_card(stage_dir, repo_id))


def _hub_id(name: str | None) -> str | None:
    """``name`` when it can be a Hub repository id (not a local folder or path), else ``None``."""
    if not name or os.path.isabs(name) or name.startswith(".") or os.path.isdir(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def _eval_results(metrics: ContinualMetrics, dataset: str, benchmark: str | None, task: int) -> list[EvalResult]:
    """``model-index`` entries: accuracy over the classes seen after ``task``, and forgetting (percent)."""
    common = dict(
        task_type="image-classification",
        task_name="Class-incremental image classification",
        dataset_type=dataset,
        dataset_name=benchmark or dataset,
        dataset_split="test",
    )
    results = [
        EvalResult(
            **common,
            metric_type="accuracy",
            metric_value=round(100 * metrics.final_accuracy, 2),
            metric_name=f"Accuracy (%) after task {task}",
        )
    ]
    if not math.isnan(metrics.forgetting):
        results.append(
            EvalResult(
                **common,
                metric_type="forgetting",
                metric_value=round(100 * metrics.forgetting, 2),
                metric_name=f"Forgetting (%) after task {task}",
            )
        )
    return results


def _matrix_rows(metrics: ContinualMetrics) -> list[list[str]]:
    """Row ``t``: the percent accuracies on tasks ``0 … t`` after task ``t``, blank above the diagonal."""
    matrix = 100 * metrics.accuracy_matrix
    size = metrics.num_tasks
    return [[f"{matrix[t, j]:.2f}" if j <= t else "" for j in range(size)] for t in range(size)]


def _cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


__all__ = ["RunRecord", "TEMPLATE_PATH", "build_model_card", "render_model_card", "write_model_card"]
