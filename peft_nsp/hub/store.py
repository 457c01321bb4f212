# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The Hub as a [`StageStore`]: stages are published as ``task-<t>`` revisions and fetched back from them; and how
to tell that the Hub cannot be reached."""

from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub
from huggingface_hub import HfApi
from huggingface_hub.errors import LocalEntryNotFoundError

from ..continual.stages import run_dir_of_stage, stage_digest
from .push import DEFAULT_PUSH_TIMEOUT, HubPushError, PushWorker, digest_in_title, logger, push_to_hub


class HubStageStore:
    """A [`StageStore`] on the Hugging Face Hub.

    Args:
        repo_id: the repository stages are published to (``None``: a store that only fetches).
        private: create the repository private.
        token: Hub token; ``None`` uses ``HF_TOKEN`` or the saved login.
        api: the [`~huggingface_hub.HfApi`] to use (default: ``HfApi(token=token)``).
        timeout: seconds a publish may take before training goes on without it (the push finishes in the
            background; the next publish or a final `push_to_hub` catches up).
    """

    def __init__(
        self,
        repo_id: str | None = None,
        *,
        private: bool | None = None,
        token: str | bool | None = None,
        api: HfApi | None = None,
        timeout: float = DEFAULT_PUSH_TIMEOUT,
    ) -> None:
        self.repo_id, self.private, self.timeout = repo_id, private, timeout
        self.api = api or HfApi(token=token)
        self._worker = PushWorker()

    def publish(self, stage: Path, task: int) -> None:
        """Push every stage of ``stage``'s run not on the Hub yet (one commit and branch each). A failed push is
        logged as a warning and training goes on; a branch conflict (``ValueError``) stops the run."""
        if self.repo_id is None:
            raise ValueError("This `HubStageStore` has no `repo_id` to publish to; pass `repo_id=` to publish.")
        output_dir = run_dir_of_stage(stage)
        try:
            self._worker.run(
                lambda: push_to_hub(output_dir, self.repo_id, private=self.private, api=self.api),
                self.timeout,
                output_dir,
            )
        except HubPushError as error:
            logger.warning("%s Training goes on; the next push retries.", error)

    def fetch(self, name: str, revision: str | None = None) -> Path:
        """The local folder (the Hub cache) holding the files of the stage ``name`` at ``revision``, checked against
        the stage digest its commit's title carries (a stage that `push_to_hub` committed)."""
        try:
            folder = Path(self.api.snapshot_download(repo_id=name, revision=revision))
        except LocalEntryNotFoundError as error:  # offline, or no answer and nothing cached
            raise hub_unreachable_error(name, revision, error) from error
        try:
            title = self.api.list_repo_commits(name, revision=revision or "main")[0].title
        except Exception as error:  # offline with the files cached: they were checked when downloaded
            logger.info("Could not read the commit of `%s` to check its digest (%s).", name, error)
            return folder
        recorded = digest_in_title(title)
        if recorded is not None and not stage_digest(folder).startswith(recorded):
            at = f" at `{revision}`" if revision else ""
            raise ValueError(
                f"The files of `{name}`{at} differ from the stage its commit recorded (sha256 {recorded}…): the "
                "download is incomplete or the repository was edited after the push. Delete the cached copy "
                f"(`hf cache delete`) and fetch it again, or continue from a local stage folder."
            )
        return folder


def hub_unreachable(name: str) -> bool:
    """Whether ``name`` is a Hub id that cannot be fetched because there is no network (or offline mode is on)."""
    if os.path.isdir(name):
        return False
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return True
    try:
        huggingface_hub.HfApi().model_info(name, timeout=10)
    except Exception as error:  # a missing repository answers; no answer at all means no network
        return (
            isinstance(error, OSError)
            and not isinstance(error, huggingface_hub.errors.HfHubHTTPError)
            or any(word in type(error).__name__ for word in ("Connect", "Timeout", "Network"))
        )
    return False


def hub_unreachable_error(source: str, revision: str | None, error: Exception) -> ConnectionError:
    """The error for a stage that had to come from the Hub when the Hub cannot be reached (offline, no network)."""
    at = f" at revision `{revision}`" if revision else ""
    download = f"hf download {source}" + (f" --revision {revision}" if revision else "") + " --local-dir <folder>"
    return ConnectionError(
        f"The Hub cannot be reached to read `{source}`{at} ({type(error).__name__}). Check the network (or unset "
        f"`HF_HUB_OFFLINE`), or download the stage where the Hub is reachable (`{download}`) and pass that folder."
    )
