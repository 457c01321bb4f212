# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Publish a run's stages to the Hub: one commit to ``main`` per task and a branch ``task-<t>`` on it.

Re-running a push resumes it. A stage counts as pushed when its branch points at a commit of ``main`` whose title
carries the stage's digest (a hash of its files); a commit that landed but whose branch was not created is found
by that title and reused, so nothing is committed or branched twice.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id

from ..continual.card import render_model_card
from ..continual.stages import (
    CARD_FILE,
    finished_stages,
    stage_digest,
    stage_files,
    stage_revision,
    verify_stage,
)


logger = logging.getLogger(__name__)

#: Hex digits of the stage digest in a stage commit's title.
_TITLE_DIGEST = 16
#: Seconds a push may take before training goes on without it (the push keeps its lock until it ends).
DEFAULT_PUSH_TIMEOUT = 900.0
_T = TypeVar("_T")


class HubPushError(RuntimeError):
    """A push failed part-way; the local output is intact and re-running the same push resumes it."""


@dataclass(frozen=True)
class PushedStage:
    """What [`push_to_hub`] did with one stage."""

    task: int
    revision: str
    commit: str
    """OID of the stage's commit on ``main``, which the branch ``revision`` points at."""
    action: Literal["committed", "branched", "unchanged"]
    """``"committed"``: new commit and branch; ``"branched"``: the commit was there (an earlier push stopped
    before its branch), the branch is new; ``"unchanged"``: both were there."""


def push_to_hub(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    api: HfApi | None = None,
    space_id: str | None = None,
) -> list[PushedStage]:
    """Push every finished stage of a run's ``output_dir`` that is not on the Hub yet, in task order.

    Per stage ``tasks/task-<t>``: one commit to ``main`` whose files are exactly the stage's (adapter with projector
    state, image processor, ``sequence.json``, ``metrics.json``, plots, and the model card rendered for ``repo_id``;
    other files on ``main`` are deleted), and a branch ``task-<t>`` at that commit, so
    ``PeftModel.from_pretrained(base, repo_id, revision="task-<t>")`` loads the model after task ``t`` (tasks
    counted from 0, like the stage folders). Nothing local is written: a failed push leaves the run byte-identical.

    Args:
        output_dir: the ``output_dir`` of [`run_class_incremental`].
        repo_id: the model repository, created if missing.
        private: visibility of a new repository (``None``: the Hub's default); an existing one is unchanged.
        token: Hub token; ``None`` uses ``HF_TOKEN`` or the saved login, as in `huggingface_hub`.
        api: the [`~huggingface_hub.HfApi`] to use (default: ``HfApi(token=token)``).
        space_id: a Space that runs the browser demo on ``repo_id`` (`python -m peft_nsp.demo space`): the cards of
            the stages this push commits link it. It must exist (checked before anything is uploaded).

    Returns:
        What happened to each finished stage found locally, in task order.

    Raises:
        HubPushError: a Hub call failed; stages pushed before it stay pushed, re-run to resume.
        ValueError: ``repo_id`` is invalid, ``output_dir`` has no finished task, a stage to push differs from the
            checksums it was written with (``.sha256``), or the repository already has a branch ``task-<t>`` that is
            not this run's stage (all checked before anything is uploaded).
    """
    validate_repo_id(repo_id)
    output_dir = Path(output_dir)
    stages = finished_stages(output_dir)
    api = api or HfApi(token=token)
    if space_id is not None and not _space_exists(api, space_id, output_dir):
        raise ValueError(
            f"The Space `{space_id}` does not exist (or is not visible to this token): create it first, e.g. "
            f"`python -m peft_nsp.demo space {repo_id} --output space/` and `hf upload {space_id} space/ "
            "--repo-type space`, then push again with it."
        )
    with _resumable(f"Reading `{repo_id}`", output_dir):
        api.create_repo(repo_id, private=private, exist_ok=True)
        branches = {ref.name: ref.target_commit for ref in api.list_repo_refs(repo_id).branches}
        history = api.list_repo_commits(repo_id, revision="main")
    head = history[0].commit_id
    commit_of_title = {commit.title: commit.commit_id for commit in history}
    plan = [(task, stage, _commit_title(task, stage_digest(stage))) for task, stage in stages]
    for task, stage, title in plan:
        _check_branch(repo_id, stage, branches.get(stage_revision(task)), commit_of_title.get(title))
        if stage_revision(task) not in branches:
            verify_stage(stage)  # nothing damaged on this disk reaches the Hub (checked before any upload)
    pushed = []
    for task, stage, title in plan:
        revision = stage_revision(task)
        commit = commit_of_title.get(title)
        if revision in branches:
            pushed.append(PushedStage(task, revision, commit, "unchanged"))
            continue
        action = "branched" if commit else "committed"
        with _resumable(f"Pushing `{revision}` to `{repo_id}`", output_dir):
            if commit is None:
                commit = head = _commit_stage(
                    api, repo_id, task, stage, title, head, render_model_card(stage, repo_id, space_id)
                )
            api.create_branch(repo_id, branch=revision, revision=commit)
        logger.info("%s of %s: %s (commit %s)", revision, repo_id, action, commit)
        pushed.append(PushedStage(task, revision, commit, action))
    return pushed


def push_with_deadline(
    output_dir: str | os.PathLike, repo_id: str, *, timeout: float = DEFAULT_PUSH_TIMEOUT, **kwargs: Any
) -> list[PushedStage]:
    """[`push_to_hub`], raising [`HubPushError`] (naming what is not pushed) if it takes longer than ``timeout``."""
    return PushWorker().run(lambda: push_to_hub(output_dir, repo_id, **kwargs), timeout, output_dir)


class PushWorker:
    """Runs pushes one at a time in a daemon thread, waiting at most a deadline for each."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None

    def run(self, push: Callable[[], _T], timeout: float, output_dir: str | os.PathLike) -> _T:
        if self._thread is not None and self._thread.is_alive():
            raise HubPushError(f"The previous push is still running (stalled Hub?). {_left_to_push(output_dir)}")
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["result"] = push()
            except BaseException as error:  # handed to the caller's thread
                outcome["error"] = error

        self._thread = threading.Thread(target=target, name="peft-nsp-push", daemon=True)
        self._thread.start()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise HubPushError(
                f"The push did not finish within {timeout:g} s (the Hub stalls or the upload is slow); it goes on in "
                f"the background. {_left_to_push(output_dir)}"
            )
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]


def _left_to_push(output_dir: str | os.PathLike) -> str:
    stages = [stage.name for _, stage in finished_stages(output_dir)]
    return (
        f"Stages of `{output_dir}` that may not be on the Hub yet: {', '.join(stages)}; run "
        f"`python -m peft_nsp.hub push {output_dir} --hub_model_id <repo>` to finish (nothing is pushed twice)."
    )


def _commit_title(task: int, digest: str) -> str:
    """The title of the stage's commit; the digest identifies the stage's files across re-runs."""
    return f"Add {stage_revision(task)}: the model after task {task} (stage sha256 {digest[:_TITLE_DIGEST]})"


def digest_in_title(title: str) -> str | None:
    """The (shortened) stage digest a stage commit's title carries, or ``None`` for another commit."""
    match = re.search(rf"\(stage sha256 ([0-9a-f]{{{_TITLE_DIGEST}}})\)$", title)
    return match.group(1) if match else None


def _commit_stage(api: HfApi, repo_id: str, task: int, stage: Path, title: str, head: str, card: bytes) -> str:
    """Commit the stage's files (with ``card`` as its README) on top of ``head`` of ``main``; returns the OID."""
    info = api.create_commit(
        repo_id,
        _operations(stage, api.list_repo_files(repo_id, revision=head), card),
        commit_message=title,
        commit_description=f"The model after task {task} (tasks counted from 0): the run's `tasks/{stage.name}`.",
        revision="main",
        parent_commit=head,  # refused if `main` moved since it was read; a re-run reads it again
    )
    return info.oid


def _check_branch(repo_id: str, stage: Path, branch_commit: str | None, stage_commit: str | None) -> None:
    if branch_commit is not None and branch_commit != stage_commit:
        raise ValueError(
            f"`{repo_id}` has a branch `{stage.name}` at commit {branch_commit} that is not the stage `{stage}` "
            "(a different run, or this run retrained): push to another repository, or delete that branch."
        )


def _operations(
    stage: Path, files_on_main: list[str], card: bytes
) -> list[CommitOperationAdd | CommitOperationDelete]:
    """Add every file of the stage and the card, delete every other file of ``main`` (``.gitattributes`` stays)."""
    names = [name for name in stage_files(stage) if name != CARD_FILE]
    stale = sorted(set(files_on_main) - {*names, CARD_FILE, ".gitattributes"})
    return [
        *(CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(stage / name)) for name in names),
        CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=card),
        *(CommitOperationDelete(path_in_repo=name) for name in stale),
    ]


def _space_exists(api: HfApi, space_id: str, output_dir: Path) -> bool:
    validate_repo_id(space_id)
    with _resumable(f"Reading the Space `{space_id}`", output_dir):
        try:
            api.space_info(space_id)
        except RepositoryNotFoundError:
            return False
    return True


@contextmanager
def _resumable(step: str, output_dir: Path) -> Iterator[None]:
    """Turn a failed Hub call into a [`HubPushError`] that says what failed and how to resume."""
    try:
        yield
    except Exception as error:
        raise HubPushError(
            f"{step} failed ({type(error).__name__}: {error}). The local output in `{output_dir}` is complete and "
            "unchanged; run the same push again to resume (stages already on the Hub are kept, none is pushed twice)."
        ) from error
