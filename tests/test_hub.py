# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Sharing a run on the Hub: task commits and branches, the model card, failures and resuming, continuing a run.

The Hub cannot be reached from the test machines; `hub_server.LocalHub` serves the endpoints a push and a download
call on 127.0.0.1, and `huggingface_hub` is pointed at it, so everything runs through its real HTTP client: requests,
retries, errors, revision resolution, the download cache, `PeftModel.from_pretrained(repo, revision=...)` and
`pipeline(..., revision=...)`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_server import Fault, LocalHub
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from peft import PeftModel
from test_loop import TEST, final_state, run
from testing_utils import blob_images, tiny_model, to_tensor

from peft_nsp import VPTNSPConfig
from peft_nsp.continual import ContinualMetrics
from peft_nsp.continual.card import render_model_card
from peft_nsp.continual.stages import stage_digest
from peft_nsp.hub import (
    HubPushError,
    HubStageStore,
    build_model_card,
    materialize_stage,
    push_to_hub,
    stage_revision,
)
from peft_nsp.trainer import NSPConfig


REPO = "someone/vpt-nsp-toy"
RUN_INFO = {"benchmark": "cifar100-10", "dataset": "uoft-cs/cifar100", "base_model": "google/vit-base-patch16-224"}
STAGE_FILES = {
    "README.md",
    "accuracy_curve.png",
    "accuracy_matrix.png",
    "adapter_config.json",
    "adapter_model.safetensors",
    "metrics.json",
    "sequence.json",
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The local Hub of this module's tests; `huggingface_hub` (here and in processes started here) talks to it."""
    with LocalHub(tmp_path_factory.mktemp("hub")).running() as local, pytest.MonkeyPatch.context() as patch:
        local.point_huggingface_hub_here(patch, tmp_path_factory.mktemp("cache"))
        yield local


@pytest.fixture
def repo(hub, request):
    """A repository name of its own for one test; faults it leaves unused are dropped."""
    name = re.sub(r"[^A-Za-z0-9-]+", "-", request.node.name.removeprefix("test_")).strip("-")
    yield f"someone/{name[:50]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    hub.faults.clear()


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def pushed_run(hub, tmp_path_factory):
    """A 3-task run pushed after each task with the default `HfApi`; the Hub answers task 1's commit with a 500."""
    hub.faults.append(Fault("create_commit", "task-1", "500"))
    records = Records()
    logging.getLogger("peft_nsp.hub").addHandler(records)
    calls = len(hub.calls)
    try:
        output_dir = tmp_path_factory.mktemp("run")
        result = run(output_dir, run_info=RUN_INFO, stage_store=HubStageStore(REPO, private=True))
    finally:
        logging.getLogger("peft_nsp.hub").removeHandler(records)
    return result, output_dir, hub, records.messages, hub.calls[calls:]


def copy_run(output_dir: Path, destination: Path) -> Path:
    shutil.copytree(output_dir, destination, ignore=shutil.ignore_patterns("training"))
    return destination


def titles(hub: LocalHub, repo: str) -> list[str]:
    """The commits of ``main``, oldest first, by the start of their titles."""
    return [title.split(":")[0] for title in hub.titles(repo)]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_hook_commits_each_task_and_catches_up_after_a_failed_push(pushed_run):
    _, output_dir, hub, warnings, calls = pushed_run
    assert len(warnings) == 1
    assert "Pushing `task-1` to `someone/vpt-nsp-toy` failed (HfHubHTTPError: Server error '500" in warnings[0]
    assert "Simulated error 500 in create_commit" in warnings[0]  # the Hub's message, as huggingface_hub shows it
    assert "run the same push again to resume" in warnings[0] and "Training goes on" in warnings[0]
    commits = [call for call in calls if call[0] in ("create_commit", "create_branch")]
    assert commits == [
        ("create_commit", "task-0"),
        ("create_branch", "task-0"),
        ("create_commit", "task-1"),  # lost: the hook warned, training went on
        ("create_commit", "task-1"),
        ("create_branch", "task-1"),  # the push after task 2 caught up
        ("create_commit", "task-2"),
        ("create_branch", "task-2"),
    ]
    assert hub.visibility(REPO) == "private"
    assert titles(hub, REPO) == ["initial commit", "Add task-0", "Add task-1", "Add task-2"]
    branches = hub.branches_of(REPO)
    assert sorted(branches) == ["main", "task-0", "task-1", "task-2"] and branches["main"] == branches["task-2"]
    assert [(p.revision, p.action) for p in push_to_hub(output_dir, REPO)] == [
        ("task-0", "unchanged"),
        ("task-1", "unchanged"),
        ("task-2", "unchanged"),
    ]


def test_each_task_commit_holds_exactly_its_stage_and_the_branch_names_it(pushed_run):
    _, output_dir, hub, _, _ = pushed_run
    initial, branches = hub.history(REPO)[-1][0], hub.branches_of(REPO)
    for task in range(3):
        stage = output_dir / "tasks" / f"task-{task}"
        oid = branches[stage_revision(task)]
        parent, title, tree = hub.commit(REPO, oid)["parent"], hub.commit(REPO, oid)["title"], hub.tree(REPO, oid)
        assert stage_revision(task) == f"task-{task}" == stage.name
        assert title.startswith(f"Add task-{task}: the model after task {task} (stage sha256 ")
        assert set(tree) == STAGE_FILES | {".gitattributes"}
        local = snapshot(stage)
        assert {name: tree[name] for name in STAGE_FILES - {"README.md"}} == {
            name: local[name] for name in STAGE_FILES - {"README.md"}
        }
        assert tree["README.md"] == render_model_card(stage, REPO)  # rendered for the repository, in memory
        assert parent == (branches[f"task-{task - 1}"] if task else initial)
    card = hub.tree(REPO, "task-2")["README.md"].decode()
    assert 'PeftModel.from_pretrained(base, "someone/vpt-nsp-toy", revision="task-2")' in card
    assert (
        'pipeline("image-classification", model=snapshot_download("someone/vpt-nsp-toy", revision="task-2"))' in card
    )
    local_card = (output_dir / "tasks" / "task-2" / "README.md").read_text()
    assert 'PeftModel.from_pretrained(base, "path/to/tasks/task-2")' in local_card  # the local card is untouched


def test_files_on_main_that_are_not_in_the_stage_are_deleted_by_its_commit(pushed_run, hub, repo, tmp_path):
    output_dir = copy_run(pushed_run[1], tmp_path / "run")
    api = HfApi()
    api.create_repo(repo)
    api.upload_file(path_or_fileobj=b"from an earlier upload", path_in_repo="notes/old.txt", repo_id=repo)
    assert "notes/old.txt" in hub.tree(repo, "main")
    push_to_hub(output_dir, repo)
    assert set(hub.tree(repo, "task-0")) == STAGE_FILES | {".gitattributes"}


def test_card_parses_and_its_metadata_is_valid_for_the_hub(pushed_run):
    result, output_dir, hub, _, _ = pushed_run
    card = ModelCard(hub.tree(REPO, "task-2")["README.md"].decode())
    data = card.data.to_dict()
    assert data["library_name"] == "peft" and data["base_model"] == RUN_INFO["base_model"]
    assert data["datasets"] == ["uoft-cs/cifar100"] and data["pipeline_tag"] == "image-classification"
    assert {"peft-nsp", "vpt-nsp", "continual-learning"} <= set(data["tags"])
    name, results = model_index_to_eval_results(data["model-index"])
    assert name == "vpt-nsp-toy"
    metrics = result.metrics
    assert [(r.metric_type, r.metric_value, r.dataset_type, r.dataset_name, r.task_type) for r in results] == [
        (
            "accuracy",
            round(100 * metrics.final_accuracy, 2),
            "uoft-cs/cifar100",
            "cifar100-10",
            "image-classification",
        ),
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
    output_dir = pushed_run[1]
    stage = shutil.copytree(output_dir / "tasks" / "task-0", tmp_path / "task-0")
    sequence = json.loads((stage / "sequence.json").read_text())
    (stage / "sequence.json").write_text(json.dumps({**sequence, "run_info": {}}))
    card = ModelCard(str(build_model_card(stage)))
    assert card.data.to_dict() == {
        "library_name": "peft",
        "pipeline_tag": "image-classification",
        "tags": ["peft-nsp", "vpt-nsp", "continual-learning", "class-incremental-learning", "visual-prompt-tuning"],
    }
    assert "(paper)" not in card.text and "| VPT-NSP², after task 0 (1 of 3 tasks) (this run) | " in card.text
    assert 'PeftModel.from_pretrained(base, "path/to/tasks/task-0")' in card.text


def test_the_card_links_the_demo_space_only_when_the_push_names_one_that_exists(pushed_run, hub, repo, tmp_path):
    """`push_to_hub(..., space_id=)` (`python -m peft_nsp.hub push --space`): a Space that does not exist is refused
    before anything is uploaded; one that exists is linked from the pushed cards; without it no card mentions one."""
    output_dir = pushed_run[1]
    assert "Try it in the browser" not in hub.tree(REPO, "task-2")["README.md"].decode()
    space = f"{repo}-demo"
    calls = len(hub.calls)
    with pytest.raises(ValueError, match=rf"The Space `{space}` does not exist.*python -m peft_nsp.demo space"):
        push_to_hub(output_dir, repo, space_id=space)
    assert not any(name in ("create_repo", "create_commit") for name, _ in hub.calls[calls:])
    hub.spaces.add(space)
    push_to_hub(output_dir, repo, space_id=space)
    card = hub.tree(repo, "task-1")["README.md"].decode()
    assert f"[`{space}`](https://huggingface.co/spaces/{space})" in card
    assert f"python -m peft_nsp.demo {repo}" in card


def test_a_stage_damaged_on_disk_is_not_pushed(pushed_run, hub, repo, tmp_path):
    """Every stage about to be uploaded is checked against its `.sha256` first: a flipped bit is named and nothing
    reaches the Hub (no commit, no branch)."""
    output_dir = shutil.copytree(pushed_run[1], tmp_path / "run", ignore=shutil.ignore_patterns("training"))
    weights = output_dir / "tasks" / "task-2" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x10
    weights.write_bytes(bytes(data))
    calls = len(hub.calls)
    with pytest.raises(ValueError, match=r"task-2` was damaged after it was written: `adapter_model.safetensors`"):
        push_to_hub(output_dir, repo)
    assert not any(name in ("create_commit", "create_branch") for name, _ in hub.calls[calls:])


def test_every_revision_loads_from_its_stage_folder_and_from_the_hub(pushed_run, tmp_path):
    result, output_dir, hub, _, _ = pushed_run
    pixel_values = to_tensor([row["image"] for row in TEST])
    for task in range(3):
        revision = stage_revision(task)
        local = PeftModel.from_pretrained(tiny_model("vit", seed=2), output_dir / "tasks" / revision).eval()
        calls = len(hub.calls)
        remote = PeftModel.from_pretrained(tiny_model("vit", seed=2), REPO, revision=revision, cache_dir=tmp_path)
        assert ("resolve", revision) in hub.calls[calls:]  # downloaded over HTTP, the branch resolved by the Hub
        names = [name for t in result.record.tasks[: task + 1] for name in t]
        assert local.class_names() == remote.class_names() == names
        assert remote.config.id2label == dict(enumerate(names))
        with torch.no_grad():
            torch.testing.assert_close(
                local(pixel_values=pixel_values).logits,
                remote.eval()(pixel_values=pixel_values).logits,
                rtol=0,
                atol=0,
            )


@pytest.mark.parametrize(
    ("fault", "branches_left", "resumed"),
    [
        (Fault("create_commit", "task-1", "500"), ["task-0"], ["unchanged", "committed", "committed"]),
        (Fault("create_commit", "task-1", "after-500"), ["task-0"], ["unchanged", "branched", "committed"]),
        (Fault("create_commit", "task-1", "401"), ["task-0"], ["unchanged", "committed", "committed"]),
        (Fault("create_branch", "task-1", "500"), ["task-0"], ["unchanged", "branched", "committed"]),
        (Fault("create_branch", "task-2", "after-500"), ["task-0", "task-1", "task-2"], ["unchanged"] * 3),
        (Fault("list_repo_refs", None, "500"), [], ["committed"] * 3),
    ],
    ids=[
        "commit-not-made",
        "commit-made-response-lost",
        "commit-unauthorized",
        "branch-not-made",
        "branch-made-response-lost",
        "reading",
    ],
)
def test_failed_push_keeps_the_local_output_and_a_rerun_resumes_without_duplicates(
    pushed_run, hub, repo, tmp_path, fault, branches_left, resumed
):
    output_dir = copy_run(pushed_run[1], tmp_path / "run")
    before = snapshot(output_dir)
    hub.faults.append(fault)
    with pytest.raises(HubPushError, match="run the same push again to resume") as error:
        push_to_hub(output_dir, repo)
    assert f"(HfHubHTTPError: {'Client' if fault.action == '401' else 'Server'} error '{fault.action[-3:]}" in str(
        error.value
    )
    assert snapshot(output_dir) == before
    assert sorted(hub.branches_of(repo)) == ["main", *branches_left]
    assert [p.action for p in push_to_hub(output_dir, repo)] == resumed
    assert titles(hub, repo) == ["initial commit", "Add task-0", "Add task-1", "Add task-2"]
    branches = hub.branches_of(repo)
    assert sorted(branches) == ["main", "task-0", "task-1", "task-2"]
    for task in range(3):
        assert hub.commit(repo, branches[f"task-{task}"])["title"].startswith(f"Add task-{task}:")
    assert snapshot(output_dir) == before


def test_huggingface_hub_retries_a_transient_error_of_an_idempotent_call(pushed_run, hub, repo, tmp_path):
    """`preupload` goes through `http_backoff`: one 500 is retried (after a second) and the push succeeds."""
    output_dir = copy_run(pushed_run[1], tmp_path / "run")
    hub.faults.append(Fault("preupload", "main", "500"))
    calls = len(hub.calls)
    assert [p.action for p in push_to_hub(output_dir, repo)] == ["committed"] * 3
    assert [call for call in hub.calls[calls:] if call[0] == "preupload"] == [("preupload", "main")] * 4


@pytest.mark.parametrize(
    ("action", "resumed"),
    [
        ("hold-upload", ["unchanged", "committed", "committed"]),
        ("hold-response", ["unchanged", "branched", "committed"]),
    ],
    ids=["killed-while-uploading", "killed-while-waiting-for-the-answer"],
)
def test_a_push_killed_mid_commit_resumes_without_duplicates(pushed_run, hub, repo, tmp_path, action, resumed):
    """`python -m peft_nsp.hub push` killed (SIGKILL) while the Hub holds the commit of task 1."""
    output_dir = copy_run(pushed_run[1], tmp_path / "run")
    fault = Fault("create_commit", "task-1", action)
    hub.faults.append(fault)
    push = subprocess.Popen(
        [sys.executable, "-m", "peft_nsp.hub", "push", str(output_dir), "--hub_model_id", repo],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert fault.reached.wait(120), "the push never reached the commit of task 1"
    finally:
        push.kill()
        push.wait()
        fault.release.set()
    assert sorted(hub.branches_of(repo)) == ["main", "task-0"]
    assert [p.action for p in push_to_hub(output_dir, repo)] == resumed
    assert titles(hub, repo) == ["initial commit", "Add task-0", "Add task-1", "Add task-2"]


def test_a_repository_holding_another_run_is_refused_before_any_upload(pushed_run, tmp_path):
    _, output_dir, hub, _, _ = pushed_run
    other = copy_run(output_dir, tmp_path / "other")
    metrics = other / "tasks" / "task-1" / "metrics.json"
    metrics.write_text(metrics.read_text() + " ")
    calls = len(hub.calls)
    with pytest.raises(ValueError, match="has a branch `task-1` at commit .* that is not the stage"):
        push_to_hub(other, REPO)
    assert not [call for call in hub.calls[calls:] if call[0] in ("preupload", "create_commit", "create_branch")]


def test_token_never_appears_in_warnings_or_errors(tmp_path, pushed_run, hub, repo, caplog, monkeypatch):
    """The Hub answers 401 to a wrong token: the failure is reported, the token is not."""
    output_dir = copy_run(pushed_run[1], tmp_path / "run")
    monkeypatch.setattr(hub, "token", "hf_TheOneTheLocalHubAccepts")
    token = "hf_ThisIsNotARealTokenButMustNeverBePrinted"
    with caplog.at_level(logging.WARNING, logger="peft_nsp.hub"):
        HubStageStore(repo, token=token).publish(output_dir / "tasks" / "task-2", 2)
    assert f"Reading `{repo}` failed (HfHubHTTPError: Client error '401" in caplog.text and token not in caplog.text
    with pytest.raises(HubPushError, match="Invalid credentials") as error:
        push_to_hub(output_dir, repo, token=token)
    assert token not in str(error.value) and token not in repr(error.value.__cause__)


def test_continuing_from_a_hub_revision_ends_like_the_uninterrupted_run(pushed_run, hub, tmp_path):
    result = pushed_run[0]
    calls = len(hub.calls)
    stage = materialize_stage(REPO, tmp_path / "continued", revision="task-1")  # `snapshot_download` over HTTP
    assert ("repo_info", "task-1") in hub.calls[calls:]
    assert stage == tmp_path / "continued" / "tasks" / "task-1"
    assert (tmp_path / "continued" / "progress.json").read_bytes() == (stage / "sequence.json").read_bytes()
    assert {path.name for path in stage.iterdir()} == STAGE_FILES | {".sha256"}
    continued = run(tmp_path / "continued", run_info=RUN_INFO)
    reference_metrics, reference_prompts = final_state(result)
    metrics, prompts = final_state(continued)
    assert metrics == reference_metrics and ContinualMetrics.from_dict(metrics).num_tasks == 3
    for a, b in zip(prompts, reference_prompts, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="already holds a run"):
        materialize_stage(REPO, tmp_path / "continued", revision="task-1")


def test_materialize_copies_a_local_stage(pushed_run, tmp_path):
    source = pushed_run[1] / "tasks" / "task-0"
    stage = materialize_stage(source, tmp_path / "new")
    assert snapshot(stage) == snapshot(source)
    assert json.loads((tmp_path / "new" / "progress.json").read_text())["finished_tasks"] == 1
    with pytest.raises(ValueError, match="`revision` is for Hub repositories"):
        materialize_stage(source, tmp_path / "other", revision="task-0")


def test_cli_pushes_and_reports_failures(pushed_run, hub, repo, tmp_path):
    """`python -m peft_nsp.hub` in its own process, `HF_ENDPOINT` and `HF_TOKEN` from the environment."""
    output_dir = copy_run(pushed_run[1], tmp_path / "run")
    hub.faults.append(Fault("create_branch", "task-0", "500"))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "peft_nsp.hub", *args], capture_output=True, text=True)

    failed = cli("push", str(output_dir), "--hub_model_id", repo, "--private")
    assert failed.returncode == 1 and f"Pushing `task-0` to `{repo}` failed (HfHubHTTPError" in failed.stderr
    pushed = cli("push", str(output_dir), "--hub_model_id", repo)
    assert [line.split(" (")[0] for line in pushed.stdout.splitlines()] == [
        "task-0: branched",
        "task-1: committed",
        "task-2: committed",
    ]
    assert hub.visibility(repo) == "private"
    materialized = cli("materialize", repo, str(tmp_path / "continued"), "--revision", "task-2")
    assert materialized.stdout.strip() == str(tmp_path / "continued" / "tasks" / "task-2")
    assert set(snapshot(tmp_path / "continued" / "tasks" / "task-2")) == STAGE_FILES | {".sha256"}


def test_a_missing_card_template_is_a_clear_error(pushed_run, tmp_path):
    with pytest.raises(OSError):
        build_model_card(pushed_run[1] / "tasks" / "task-0", template_path=tmp_path / "missing.md")


def test_the_wheel_ships_the_card_template(tmp_path):
    """An installed (non-editable) package renders our card: the template is a file inside the wheel."""
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    source = shutil.copytree(
        root,
        tmp_path / "source",
        symlinks=True,  # the build writes into its source tree
        ignore=shutil.ignore_patterns(".git", "build", "runs", "*.egg-info", "__pycache__"),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("peft_nsp-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read("peft_nsp/continual/model_card_template.md")
    assert shipped == (root / "model_cards" / "vpt_nsp.md").read_bytes()


def test_a_continued_run_is_published_as_the_next_revisions_of_the_same_repository(pushed_run, hub, repo, tmp_path):
    """A repository holding task-0 only; a run continued from `<repo>@task-0` (downloaded over HTTP) on the other
    classes lands as task-1, task-2 of the same repository, with cards describing the longer sequence."""
    from test_loop import TRAIN

    from peft_nsp.loop import ClassIncrementalConfig, run_class_incremental
    from peft_nsp.trainer import NSPConfig

    result, output_dir = pushed_run[:2]
    materialize_stage(output_dir / "tasks" / "task-0", tmp_path / "first-only")  # a run that stopped after task 0
    push_to_hub(tmp_path / "first-only", repo)
    args = NSPConfig(
        output_dir=str(tmp_path / "continued"),
        num_train_epochs=1,
        per_device_train_batch_size=4,
        learning_rate=0.05,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=5,
        save_strategy="no",
    )
    calls = len(hub.calls)
    continued = run_class_incremental(
        tiny_model("vit", seed=2),
        None,
        args,
        ClassIncrementalConfig(num_tasks=2, continue_from=f"{repo}@task-0", run_info=RUN_INFO),
        TRAIN,
        TEST,
        train_transform=to_tensor,
        stage_store=HubStageStore(repo),
    )
    assert any(call[1] == "task-0" for call in hub.calls[calls:])  # the revision was read over HTTP
    assert continued.record.tasks[0] == result.record.tasks[0] and len(continued.record.tasks) == 3
    assert continued.record.continued_from == f"{repo}@task-0"
    assert sorted(hub.branches_of(repo)) == ["main", "task-0", "task-1", "task-2"]
    card = hub.tree(repo, "task-2")["README.md"].decode()
    assert "continued `" in card and "| `task-2` | task 2 |" in card and "(3 of 3 tasks)" in card
    assert len(continued.metrics.total[-1]) == 3  # the accuracy matrix covers the continued adapter's task too


def test_a_fetched_stage_whose_files_differ_from_its_commit_digest_is_refused(pushed_run, repo, tmp_path):
    """The stage store checks what it fetches against the digest in the stage commit's title: a cached file that was
    damaged after the download (or an incomplete one) is named, before anything is loaded or trained."""
    output_dir = pushed_run[1]
    push_to_hub(materialize_stage(output_dir / "tasks" / "task-0", tmp_path / "first").parent.parent, repo)
    store = HubStageStore()
    folder = store.fetch(repo, "task-0")
    assert stage_digest(folder) == stage_digest(output_dir / "tasks" / "task-0")
    weights = (folder / "adapter_model.safetensors").resolve()  # the blob in the Hub cache
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"differ from the stage its commit recorded.*hf cache delete"):
        store.fetch(repo, "task-0")


def test_pipeline_of_a_hub_revision(pushed_run, hub, repo, tmp_path):
    """`pipeline` over HTTP, the base model from its own repository. transformers 5.23 resolves the adapter's
    ``revision`` in the base model's repository too (`pipelines/__init__.py`, `resolve_revision`), so
    `pipeline(model=<repo>, revision="task-1")` fails unless the base repository has that branch; the adapter loaded
    with `PeftModel.from_pretrained(base, <repo>, revision="task-1")` goes into `pipeline` with the classes of tasks
    0 and 1."""
    from PIL import Image
    from transformers import AutoModel, ViTImageProcessor, pipeline

    result, output_dir = pushed_run[:2]
    base_dir, base_repo = tmp_path / "base", f"{repo}-base"
    tiny_model("vit", seed=2).save_pretrained(base_dir)
    ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        base_dir
    )
    api = HfApi()
    api.create_repo(base_repo)
    api.upload_folder(folder_path=base_dir, repo_id=base_repo)
    adapter_run = copy_run(output_dir, tmp_path / "run")
    for task in range(3):  # the adapters name the base model's repository (the run used a model made in memory)
        stage = adapter_run / "tasks" / f"task-{task}"
        path = stage / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "base_model_name_or_path": base_repo}))
        listing = stage / ".sha256"  # an intended edit: its checksum too, or the push refuses the stage
        lines = [line.split("  ", 1) for line in listing.read_text().splitlines()]
        listing.write_text(
            "".join(f"{hashlib.sha256((stage / name).read_bytes()).hexdigest()}  {name}\n" for _, name in lines)
        )
    push_to_hub(adapter_run, repo)
    processor = ViTImageProcessor.from_pretrained(base_repo)
    with pytest.raises(OSError, match=f"task-1 is not a valid git identifier .* for this model name.*{base_repo}"):
        pipeline("image-classification", model=repo, revision="task-1", image_processor=processor)
    calls = len(hub.calls)
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(base_repo), repo, revision="task-1")
    assert ("resolve", "task-1") in hub.calls[calls:]
    classify = pipeline("image-classification", model=model, image_processor=processor)
    labels = {answer["label"] for answer in classify(Image.new("RGB", (16, 16)), top_k=10)}
    assert labels == {name for task in result.record.tasks[:2] for name in task}


def test_importing_the_hub_package_stays_light():
    """`peft_nsp.hub` and `peft_nsp.continual.stages` load neither the Trainer stack nor matplotlib."""
    import subprocess
    import sys

    code = (
        "import sys, peft_nsp.hub, peft_nsp.continual.stages; "
        "print([m for m in ('transformers.trainer', 'matplotlib', 'peft_nsp.loop') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_an_unreachable_hub_is_named_once_with_the_way_out(tmp_path, monkeypatch):
    """Offline: `materialize` and `continue_from=<repo>@<revision>` say the Hub cannot be reached and what to do."""
    import huggingface_hub

    from peft_nsp.loop import ClassIncrementalConfig, run_class_incremental

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        ConnectionError, match=r"Hub cannot be reached to read `me/repo` at revision `task-2`.*hf down"
    ):
        materialize_stage("me/repo", tmp_path / "out", revision="task-2")
    args = NSPConfig(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True)
    with pytest.raises(ConnectionError, match=r"`me/repo` at revision `task-2`.*--revision task-2"):
        run_class_incremental(
            tiny_model("vit"),
            VPTNSPConfig(),
            args,
            ClassIncrementalConfig(num_tasks=1, continue_from="me/repo@task-2"),
            blob_images(2, 2),
            blob_images(2, 1),
            train_transform=to_tensor,
        )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "peft_nsp.hub",
            "materialize",
            "me/repo",
            str(tmp_path / "cli"),
            "--revision",
            "task-2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 1 and "Hub cannot be reached" in done.stderr and "Traceback" not in done.stderr
