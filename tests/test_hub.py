# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Sharing a run on the Hub: task commits and branches, the model card, failures and resuming, continuing a run.

The Hub cannot be reached from the test machines. Everything up to the network runs for real (stage folders, cards,
commit operations, `PeftModel.from_pretrained`, the Hub cache layout read offline by `huggingface_hub`); the calls
to `huggingface_hub.HfApi` go to `RecordingHub`, an in-memory double injected at that one boundary (`api=`), which
keeps commits, branches and trees like a Hub repository and records every call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path

import huggingface_hub
import pytest
import torch
from testing_utils import tiny_model, to_tensor
from huggingface_hub import CommitInfo, CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard
from huggingface_hub.hf_api import GitCommitInfo, GitRefInfo, GitRefs
from huggingface_hub.repocard_data import model_index_to_eval_results
from peft import PeftModel
from test_loop import TEST, final_state, run

from peft_nsp.continual import ContinualMetrics
from peft_nsp.continual.card import render_model_card
from peft_nsp.hub import (
    HubPushError,
    build_model_card,
    materialize_stage,
    push_after_each_task,
    push_to_hub,
    stage_revision,
)
from peft_nsp.hub.__main__ import main

REPO = "someone/vpt-nsp-toy"
RUN_INFO = {"benchmark": "cifar100-10", "dataset": "uoft-cs/cifar100", "base_model": "google/vit-base-patch16-224"}
STAGE_FILES = {
    "README.md", "accuracy_curve.png", "accuracy_matrix.png", "adapter_config.json", "adapter_model.safetensors",
    "metrics.json", "sequence.json",
}


class RecordingHub:
    """In-memory double of the `HfApi` methods the push uses: one repository, git-like commits and branches.

    ``fail`` lists ``(method, revision, when)`` to raise a network error once, ``"before"`` the call acts or
    ``"after"`` it (the Hub did it, the response was lost). ``calls`` records ``(method, revision)``.
    """

    def __init__(self, fail=(), cache_dir=None):
        self.fail, self.cache_dir = list(fail), cache_dir
        self.calls = []
        self.commits = {}  # oid → (parent, title, tree {path: bytes})
        self.branches = {}
        self.private = None

    def create_repo(self, repo_id, *, private=None, exist_ok=False):
        self._call("create_repo", None, repo_id)
        if self.branches and not exist_ok:
            raise ValueError("repository exists")
        if not self.branches:
            self.private = private
            self.branches["main"] = self._commit(None, "initial commit", {".gitattributes": b"*.safetensors lfs\n"})

    def list_repo_refs(self, repo_id):
        self._call("list_repo_refs", None, repo_id)
        refs = [GitRefInfo(name, f"refs/heads/{name}", oid) for name, oid in self.branches.items()]
        return GitRefs(branches=refs, converts=[], tags=[])

    def list_repo_commits(self, repo_id, *, revision="main"):
        self._call("list_repo_commits", revision, repo_id)
        history, oid = [], self.branches[revision]
        while oid is not None:
            parent, title, _ = self.commits[oid]
            history.append(GitCommitInfo(oid, [], datetime.now(timezone.utc), title, "", None, None))
            oid = parent
        return history

    def list_repo_files(self, repo_id, *, revision="main"):
        self._call("list_repo_files", revision, repo_id)
        return sorted(self.tree(revision))

    def create_commit(self, repo_id, operations, *, commit_message, commit_description=None, revision="main",
                      parent_commit=None):
        stage = commit_message.split(":")[0].removeprefix("Add ")
        self._call("create_commit", stage, repo_id)
        if parent_commit != self.branches[revision]:
            raise RuntimeError("412 Precondition Failed: parent commit is not the head")
        tree = dict(self.tree(revision))
        for operation in operations:
            if isinstance(operation, CommitOperationAdd):
                source = operation.path_or_fileobj
                tree[operation.path_in_repo] = source if isinstance(source, bytes) else Path(source).read_bytes()
            else:
                assert isinstance(operation, CommitOperationDelete)
                del tree[operation.path_in_repo]
        oid = self.branches[revision] = self._commit(parent_commit, commit_message, tree)
        self._fail("create_commit", stage, "after")
        return CommitInfo(f"https://huggingface.co/{repo_id}/commit/{oid}", commit_message, commit_description, oid)

    def create_branch(self, repo_id, *, branch, revision, exist_ok=False):
        self._call("create_branch", branch, repo_id)
        if branch in self.branches and not exist_ok:
            raise RuntimeError(f"409 Conflict: branch {branch} exists")
        self.branches[branch] = revision
        self._fail("create_branch", branch, "after")

    def snapshot_download(self, repo_id, *, revision=None, cache_dir=None):
        """Write ``revision`` into the real Hub cache layout (as `huggingface_hub` does) and return its folder."""
        self._call("snapshot_download", revision, repo_id)
        oid = self.branches[revision or "main"]
        repo = Path(cache_dir or self.cache_dir) / f"models--{repo_id.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / (revision or "main")).write_text(oid)
        for name, data in self.tree(oid).items():
            (repo / "snapshots" / oid / name).parent.mkdir(parents=True, exist_ok=True)
            (repo / "snapshots" / oid / name).write_bytes(data)
        return str(repo / "snapshots" / oid)

    def tree(self, revision):
        return self.commits[self.branches.get(revision, revision)][2]

    def titles(self):
        return [commit.title for commit in reversed(self.list_repo_commits(REPO))]

    def _call(self, method, revision, repo_id):
        assert repo_id == REPO
        self.calls.append((method, revision))
        self._fail(method, revision, "before")

    def _fail(self, method, revision, when):
        if (method, revision, when) in self.fail:
            self.fail.remove((method, revision, when))
            raise ConnectionError(f"simulated network failure in {method} ({when})")

    def _commit(self, parent, title, tree):
        oid = hashlib.sha1(f"{parent}{title}{len(self.commits)}".encode()).hexdigest()
        self.commits[oid] = (parent, title, tree)
        return oid


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def pushed_run(tmp_path_factory):
    """A 3-task run pushed after each task; the push after task 1 loses its connection once."""
    hub = RecordingHub(fail=[("create_commit", "task-1", "before")])
    records = Records()
    logging.getLogger("peft_nsp.hub").addHandler(records)
    try:
        output_dir = tmp_path_factory.mktemp("run")
        result = run(output_dir, run_info=RUN_INFO, on_stage_saved=push_after_each_task(REPO, private=True, api=hub))
    finally:
        logging.getLogger("peft_nsp.hub").removeHandler(records)
    return result, output_dir, hub, records.messages


def copy_run(output_dir: Path, destination: Path) -> Path:
    shutil.copytree(output_dir, destination, ignore=shutil.ignore_patterns("training"))
    return destination


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_hook_commits_each_task_and_catches_up_after_a_failed_push(pushed_run):
    _, output_dir, hub, warnings = pushed_run
    assert len(warnings) == 1
    assert "Pushing `task-1` to `someone/vpt-nsp-toy` failed (ConnectionError" in warnings[0]
    assert "run the same push again to resume" in warnings[0] and "Training goes on" in warnings[0]
    commits = [call for call in hub.calls if call[0] in ("create_commit", "create_branch")]
    assert commits == [
        ("create_commit", "task-0"), ("create_branch", "task-0"),
        ("create_commit", "task-1"),  # lost: the hook warned, training went on
        ("create_commit", "task-1"), ("create_branch", "task-1"),  # the push after task 2 caught up
        ("create_commit", "task-2"), ("create_branch", "task-2"),
    ]
    assert hub.private is True
    assert [title.split(":")[0] for title in hub.titles()] == ["initial commit", *[f"Add task-{t}" for t in range(3)]]
    assert sorted(hub.branches) == ["main", "task-0", "task-1", "task-2"]
    assert hub.branches["main"] == hub.branches["task-2"]
    assert [(p.revision, p.action) for p in push_to_hub(output_dir, REPO, api=hub)] == [
        ("task-0", "unchanged"), ("task-1", "unchanged"), ("task-2", "unchanged")
    ]


def test_each_task_commit_holds_exactly_its_stage_and_the_branch_names_it(pushed_run):
    _, output_dir, hub, _ = pushed_run
    (initial,) = [oid for oid, (parent, _, _) in hub.commits.items() if parent is None]
    for task in range(3):
        stage = output_dir / "tasks" / f"task-{task}"
        oid = hub.branches[stage_revision(task)]
        parent, title, tree = hub.commits[oid]
        assert stage_revision(task) == f"task-{task}" == stage.name
        assert title.startswith(f"Add task-{task}: the model after task {task} (stage sha256 ")
        assert set(tree) == STAGE_FILES | {".gitattributes"}
        local = snapshot(stage)
        assert {name: tree[name] for name in STAGE_FILES - {"README.md"}} == {
            name: local[name] for name in STAGE_FILES - {"README.md"}
        }
        assert tree["README.md"] == render_model_card(stage, REPO)  # rendered for the repository, in memory
        assert parent == (hub.branches[f"task-{task - 1}"] if task else initial)
    card = hub.tree("task-2")["README.md"].decode()
    assert 'PeftModel.from_pretrained(base, "someone/vpt-nsp-toy", revision="task-2")' in card
    assert 'pipeline("image-classification", model="someone/vpt-nsp-toy", revision="task-2")' in card
    local_card = (output_dir / "tasks" / "task-2" / "README.md").read_text()
    assert 'PeftModel.from_pretrained(base, "path/to/tasks/task-2")' in local_card  # the local card is untouched


def test_files_on_main_that_are_not_in_the_stage_are_deleted_by_its_commit(pushed_run, tmp_path):
    output_dir = copy_run(pushed_run[1], tmp_path / "run")
    hub = RecordingHub()
    hub.create_repo(REPO)
    old = tmp_path / "notes.txt"
    old.write_text("from an earlier upload")
    hub.create_commit(REPO, [CommitOperationAdd(path_in_repo="notes/old.txt", path_or_fileobj=str(old))],
                      commit_message="Earlier upload", parent_commit=hub.branches["main"])
    push_to_hub(output_dir, REPO, api=hub)
    assert set(hub.tree("task-0")) == STAGE_FILES | {".gitattributes"}


def test_card_parses_and_its_metadata_is_valid_for_the_hub(pushed_run):
    result, output_dir, hub, _ = pushed_run
    card = ModelCard(hub.tree("task-2")["README.md"].decode())
    data = card.data.to_dict()
    assert data["library_name"] == "peft" and data["base_model"] == RUN_INFO["base_model"]
    assert data["datasets"] == ["uoft-cs/cifar100"] and data["pipeline_tag"] == "image-classification"
    assert {"peft-nsp", "vpt-nsp", "continual-learning"} <= set(data["tags"])
    name, results = model_index_to_eval_results(data["model-index"])
    assert name == "vpt-nsp-toy"
    metrics = result.metrics
    assert [(r.metric_type, r.metric_value, r.dataset_type, r.dataset_name, r.task_type) for r in results] == [
        ("accuracy", round(100 * metrics.final_accuracy, 2), "uoft-cs/cifar100", "cifar100-10", "image-classification"),
        ("forgetting", round(100 * metrics.forgetting, 2), "uoft-cs/cifar100", "cifar100-10", "image-classification"),
    ]
    text = card.text
    matrix = 100 * metrics.accuracy_matrix
    assert f"| 2 | {matrix[2, 0]:.2f} | {matrix[2, 1]:.2f} | {matrix[2, 2]:.2f} | " in text
    assert f"| VPT-NSP², after task 2 (3 of 3 tasks) (this run) | {100 * metrics.final_accuracy:.2f} |" in text
    assert "| VPT-NSP² (paper) | 91.74 | 3.28 |" in text and "https://huggingface.co/papers/2406.05658" in text
    assert "![Accuracy matrix](accuracy_matrix.png)" in text
    assert "![Accuracy after each task](accuracy_curve.png)" in text
    names = [name for task in result.record.tasks for name in task]
    assert f"| `task-1` | task 1 | {names[2]} (2), {names[3]} (3) |" in text
    assert 'continue_from="someone/vpt-nsp-toy@task-2"' in text and "trainer = NSPTrainer(model" in text
    assert "| `learning_rate` | `0.05` |" in text and "| `prompt_length` | `2` |" in text
    assert "## Limitations" in text and "`task-0` is the model after the first task" in text


def test_card_without_run_info_has_no_hub_claims(pushed_run, tmp_path):
    _, output_dir, _, _ = pushed_run
    stage = shutil.copytree(output_dir / "tasks" / "task-0", tmp_path / "task-0")
    sequence = json.loads((stage / "sequence.json").read_text())
    (stage / "sequence.json").write_text(json.dumps({**sequence, "run_info": {}}))
    card = ModelCard(str(build_model_card(stage)))
    assert card.data.to_dict() == {
        "library_name": "peft", "pipeline_tag": "image-classification",
        "tags": ["peft-nsp", "vpt-nsp", "continual-learning", "class-incremental-learning", "visual-prompt-tuning"],
    }
    assert "(paper)" not in card.text and "| VPT-NSP², after task 0 (1 of 3 tasks) (this run) | " in card.text
    assert 'PeftModel.from_pretrained(base, "path/to/tasks/task-0")' in card.text


def test_every_revision_loads_from_its_stage_folder_and_from_the_hub_cache(pushed_run, tmp_path, monkeypatch):
    result, output_dir, hub, _ = pushed_run
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # PEFT reads the cache, no network
    pixel_values = to_tensor([row["image"] for row in TEST])
    for task in range(3):
        revision = stage_revision(task)
        hub.snapshot_download(REPO, revision=revision, cache_dir=tmp_path)
        local = PeftModel.from_pretrained(tiny_model("vit", seed=2), output_dir / "tasks" / revision).eval()
        remote = PeftModel.from_pretrained(tiny_model("vit", seed=2), REPO, revision=revision, cache_dir=tmp_path)
        names = [name for t in result.record.tasks[: task + 1] for name in t]
        assert local.class_names() == remote.class_names() == names
        assert remote.config.id2label == dict(enumerate(names))
        with torch.no_grad():
            torch.testing.assert_close(local(pixel_values=pixel_values).logits,
                                       remote.eval()(pixel_values=pixel_values).logits, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("failure", "branches_left", "resumed"),
    [
        (("create_commit", "task-1", "before"), ["task-0"], ["unchanged", "committed", "committed"]),
        (("create_commit", "task-1", "after"), ["task-0"], ["unchanged", "branched", "committed"]),
        (("create_branch", "task-1", "before"), ["task-0"], ["unchanged", "branched", "committed"]),
        (("create_branch", "task-2", "after"), ["task-0", "task-1", "task-2"], ["unchanged"] * 3),
        (("list_repo_refs", None, "before"), [], ["committed"] * 3),
    ],
    ids=["commit-not-made", "commit-made-response-lost", "branch-not-made", "branch-made-response-lost", "reading"],
)
def test_failed_push_keeps_the_local_output_and_a_rerun_resumes_without_duplicates(
    pushed_run, tmp_path, failure, branches_left, resumed
):
    output_dir = copy_run(pushed_run[1], tmp_path / "run")
    before = snapshot(output_dir)
    hub = RecordingHub(fail=[failure])
    with pytest.raises(HubPushError, match="run the same push again to resume") as error:
        push_to_hub(output_dir, REPO, api=hub)
    assert "(ConnectionError: simulated network failure" in str(error.value)
    assert snapshot(output_dir) == before
    assert sorted(hub.branches) == ["main", *branches_left]
    assert [p.action for p in push_to_hub(output_dir, REPO, api=hub)] == resumed
    assert [title.split(":")[0] for title in hub.titles()] == ["initial commit", *[f"Add task-{t}" for t in range(3)]]
    assert sorted(hub.branches) == ["main", "task-0", "task-1", "task-2"]
    for task in range(3):
        assert hub.commits[hub.branches[f"task-{task}"]][1].startswith(f"Add task-{task}:")
    assert snapshot(output_dir) == before


def test_a_repository_holding_another_run_is_refused_before_any_upload(pushed_run, tmp_path):
    _, output_dir, hub, _ = pushed_run
    other = copy_run(output_dir, tmp_path / "other")
    metrics = other / "tasks" / "task-1" / "metrics.json"
    metrics.write_text(metrics.read_text() + " ")
    calls = len(hub.calls)
    with pytest.raises(ValueError, match="has a branch `task-1` at commit .* that is not the stage"):
        push_to_hub(other, REPO, api=hub)
    assert not [call for call in hub.calls[calls:] if call[0] in ("create_commit", "create_branch")]


def test_token_never_appears_in_warnings_or_errors(tmp_path, pushed_run, caplog):
    """A real `HfApi` against a closed local port: the failure is reported, the token is not."""
    output_dir = copy_run(pushed_run[1], tmp_path / "run")
    token = "hf_ThisIsNotARealTokenButMustNeverBePrinted"
    api = HfApi(endpoint="http://127.0.0.1:1", token=token)
    with caplog.at_level(logging.WARNING, logger="peft_nsp.hub"):
        push_after_each_task(REPO, token=token, api=api)(output_dir / "tasks" / "task-2", 2)
    assert "Reading `someone/vpt-nsp-toy` failed (ConnectError" in caplog.text and token not in caplog.text
    with pytest.raises(HubPushError) as error:
        push_to_hub(output_dir, REPO, token=token, api=api)
    assert token not in str(error.value) and token not in repr(error.value.__cause__)


def test_continuing_from_a_hub_revision_ends_like_the_uninterrupted_run(pushed_run, tmp_path, monkeypatch):
    result, _, hub, _ = pushed_run
    monkeypatch.setattr(hub, "cache_dir", tmp_path / "cache")  # where `HfApi.snapshot_download` would download
    stage = materialize_stage(REPO, tmp_path / "continued", revision="task-1", api=hub)
    assert stage == tmp_path / "continued" / "tasks" / "task-1"
    assert (tmp_path / "continued" / "progress.json").read_bytes() == (stage / "sequence.json").read_bytes()
    assert {path.name for path in stage.iterdir()} == STAGE_FILES
    continued = run(tmp_path / "continued", run_info=RUN_INFO)
    reference_metrics, reference_prompts = final_state(result)
    metrics, prompts = final_state(continued)
    assert metrics == reference_metrics and ContinualMetrics.from_dict(metrics).num_tasks == 3
    for a, b in zip(prompts, reference_prompts, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="already holds a run"):
        materialize_stage(REPO, tmp_path / "continued", revision="task-1", api=hub)


def test_materialize_copies_a_local_stage(pushed_run, tmp_path):
    source = pushed_run[1] / "tasks" / "task-0"
    stage = materialize_stage(source, tmp_path / "new")
    assert snapshot(stage) == snapshot(source)
    assert json.loads((tmp_path / "new" / "progress.json").read_text())["finished_tasks"] == 1
    with pytest.raises(ValueError, match="`revision` is for Hub repositories"):
        materialize_stage(source, tmp_path / "other", revision="task-0")


def test_cli_pushes_and_reports_failures(pushed_run, tmp_path, monkeypatch, capsys):
    output_dir = copy_run(pushed_run[1], tmp_path / "run")
    hub = RecordingHub(fail=[("create_branch", "task-0", "before")])
    monkeypatch.setattr("peft_nsp.hub.push.HfApi", lambda token=None: hub)
    monkeypatch.setattr("peft_nsp.hub.__main__.set_client_factory", lambda factory: None)
    with pytest.raises(SystemExit, match="Pushing `task-0` to `someone/vpt-nsp-toy` failed"):
        main(["push", str(output_dir), "--hub_model_id", REPO, "--private"])
    main(["push", str(output_dir), "--hub_model_id", REPO])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["task-0: branched", "task-1: committed", "task-2: committed"]
    assert hub.private is True
    main(["materialize", str(output_dir / "tasks" / "task-2"), str(tmp_path / "continued")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "continued" / "tasks" / "task-2")


def test_a_missing_card_template_is_a_clear_error(pushed_run, tmp_path):
    with pytest.raises(OSError):
        build_model_card(pushed_run[1] / "tasks" / "task-0", template_path=tmp_path / "missing.md")


def test_the_wheel_ships_the_card_template(tmp_path):
    """An installed (non-editable) package renders our card: the template is a file inside the wheel."""
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    source = shutil.copytree(root, tmp_path / "source", symlinks=True,  # the build writes into its source tree
                             ignore=shutil.ignore_patterns(".git", "build", "runs", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("peft_nsp-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read("peft_nsp/continual/model_card_template.md")
    assert shipped == (root / "model_cards" / "vpt_nsp.md").read_bytes()


def test_a_continued_run_is_published_as_the_next_revisions_of_the_same_repository(pushed_run, tmp_path):
    """Stage task-0 of the pushed run continued on the other classes: the new stages land as task-1, task-2 of the
    repository, with cards describing the longer sequence."""
    from peft_nsp.continual.loop import run_class_incremental
    from peft_nsp.trainer import NSPConfig
    from test_loop import TRAIN

    result, output_dir, _, _ = pushed_run
    hub = RecordingHub()
    push_to_hub(copy_run(output_dir, tmp_path / "first-only"), REPO, api=hub)  # task-0 … task-2 of the first run
    for branch in ("task-1", "task-2"):  # keep only task-0 on the Hub, as if the first run had stopped there
        del hub.branches[branch]
    hub.branches["main"] = hub.branches["task-0"]
    args = NSPConfig(output_dir=str(tmp_path / "continued"), num_train_epochs=1, per_device_train_batch_size=4,
                     learning_rate=0.05, report_to="none", use_cpu=True, disable_tqdm=True, seed=5,
                     save_strategy="no")
    continued = run_class_incremental(
        tiny_model("vit", seed=2), None, args, TRAIN, TEST, num_tasks=2, train_transform=to_tensor,
        continue_from=output_dir / "tasks" / "task-0", run_info=RUN_INFO,
        on_stage_saved=push_after_each_task(REPO, api=hub),
    )
    assert continued.record.tasks[0] == result.record.tasks[0] and len(continued.record.tasks) == 3
    assert sorted(hub.branches) == ["main", "task-0", "task-1", "task-2"]
    card = hub.tree("task-2")["README.md"].decode()
    assert "continued `" in card and "| `task-2` | task 2 |" in card and "(3 of 3 tasks)" in card
    assert len(continued.metrics.total[-1]) == 3  # the accuracy matrix covers the continued adapter's task too


def test_pipeline_loads_a_hub_revision_by_name(pushed_run, tmp_path, monkeypatch):
    """`pipeline(model=<repo>, revision="task-1")` from the Hub cache (offline): the classes of tasks 0 and 1."""
    from PIL import Image
    from transformers import ViTImageProcessor, pipeline

    result, output_dir, hub, _ = pushed_run
    base_dir = tmp_path / "base"
    tiny_model("vit", seed=2).save_pretrained(base_dir)
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        base_dir)
    cache = tmp_path / "cache"
    folder = Path(hub.snapshot_download(REPO, revision="task-1", cache_dir=cache))
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(base_dir)}))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    classify = pipeline("image-classification", model=REPO, revision="task-1",
                        image_processor=ViTImageProcessor.from_pretrained(base_dir))
    labels = {answer["label"] for answer in classify(Image.new("RGB", (16, 16)), top_k=10)}
    assert labels == {name for task in result.record.tasks[:2] for name in task}


def test_importing_the_hub_package_stays_light():
    """`peft_nsp.hub` and `peft_nsp.continual.stages` load neither the Trainer stack nor matplotlib."""
    import subprocess
    import sys

    code = ("import sys, peft_nsp.hub, peft_nsp.continual.stages; "
            "print([m for m in ('transformers.trainer', 'matplotlib', 'peft_nsp.continual.loop') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
