# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The Gradio app: the run (accuracy heat map, per-task curves, classes of every revision), classification by any
two revisions side by side, and teaching a new task in the browser.

API routes (``gradio_client``): ``/classify`` (image, revision, top_k) → label; ``/compare`` (image, sketch,
revision_a, revision_b, top_k) → two labels; ``/teach`` (bundled classes, images per class, three (name, files)
pairs, epochs, without_projection) → status, table, …; ``/cancel`` → status.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageOps

from .._io import write_atomically
from ..continual.metrics import ContinualMetrics
from ..continual.plots import plot_accuracy_matrix
from .run import DemoRun
from .teaching import Lesson, TeachingCancelled, bundled_classes, bundled_task, teach, uploaded_task


#: Classes of the user's own images the teach tab offers fields for.
OWN_CLASSES = 3
MNIST_SIDE = 28


def build_demo(
    source: str | os.PathLike | DemoRun,
    teach_dir: str | os.PathLike | None = None,
    epochs: float = 3.0,
    images_per_class: int = 20,
    held_out_per_class: int = 20,
) -> gr.Blocks:
    """The app for ``source`` (a run's ``output_dir``, a stage folder, ``user/repo`` or ``user/repo@task-<t>``).

    Args:
        source: what to show, or a [`DemoRun`] of it.
        teach_dir: where taught tasks go when ``source`` is not a run on this machine (see [`DemoRun`]).
        epochs / images_per_class: the teach tab's defaults (epochs, bundled training images per class).
        held_out_per_class: held-out images per class that old and new tasks are measured on.
    """
    run = source if isinstance(source, DemoRun) else DemoRun(source, teach_dir)
    plots = Path(tempfile.mkdtemp(prefix="peft-nsp-demo-plots-"))
    cancel = threading.Event()
    digits = all(len(name) == 1 and name.isdigit() for name in run.record().class_names)

    def classify(image: Image.Image | None, revision: str, top_k: float) -> dict[str, float]:
        if image is None:
            raise gr.Error("Upload an image (or draw one) first.")
        return _user_errors(run.classify, image, revision, int(top_k))

    def compare(
        image: Image.Image | None, sketch: dict | None, revision_a: str, revision_b: str, top_k: float
    ) -> tuple[dict[str, float], dict[str, float]]:
        image = image if image is not None else sketch_image(sketch)
        return classify(image, revision_a, top_k), classify(image, revision_b, top_k)

    def run_views() -> tuple[Any, ...]:
        """The heat map, the per-task curves, the classes table, the header, revision and class choices."""
        matrix, curves = run_plots(run, plots)
        names = run.names
        teachable = teachable_classes(run)
        return (
            matrix,
            curves,
            revision_table(run),
            header(run),
            gr.update(choices=names, value=names[-1]),
            gr.update(choices=names),
            gr.update(choices=teachable, value=[value for _, value in teachable[:2]]),
        )

    def teach_task(
        classes: list[str] | None,
        per_class: float,
        *own: Any,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's idiom: the default is the tracker)
    ) -> tuple[Any, ...]:
        *pairs, epochs_, without_projection = own
        cancel.clear()
        named = {name: files for name, files in zip(pairs[::2], pairs[1::2]) if name or files}
        try:
            if named:
                task = uploaded_task({name: files or [] for name, files in named.items()})
            elif classes:
                task = bundled_task(classes, int(per_class), held_out_per_class, run.record().seed)
            else:
                raise ValueError("Pick two or more bundled classes, or give class names with images of each.")
            lesson = teach(
                run,
                task,
                epochs=float(epochs_),
                held_out_per_class=held_out_per_class,
                without_projection=bool(without_projection),
                report=lambda phase, step, steps: progress((step, steps), desc=phase),
                cancel=cancel,
            )
        except TeachingCancelled as error:
            return (f"**Cancelled.** {error} The latest stage is still `{run.latest.name}`.", None, *run_views())
        except ValueError as error:
            raise gr.Error(str(error)) from error
        return (lesson_summary(lesson), lesson_table(lesson), *run_views())

    def stop() -> str:
        cancel.set()
        return "Cancelling: training stops at its next step and writes nothing."

    with gr.Blocks(title=f"peft-nsp: {run.source}", analytics_enabled=False) as demo:
        title = gr.Markdown(header(run), elem_id="header")
        with gr.Tab("The run"):
            with gr.Row():
                matrix = gr.Image(label="Accuracy matrix", type="filepath", interactive=False)
                curves = gr.Image(label="Each task after every later task", type="filepath", interactive=False)
            classes_table = gr.Dataframe(label="Classes of every revision", interactive=False)
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(label="Image", type="pil", sources=["upload", "clipboard"], elem_id="image")
                    with gr.Accordion("…or draw one", open=digits):
                        sketch = gr.Sketchpad(label="Sketch", type="pil", elem_id="sketch")
                    top_k = gr.Slider(1, 10, value=5, step=1, label="top-k")
                    classify_button = gr.Button("Classify with both revisions", variant="primary", elem_id="classify")
                with gr.Column():
                    revision_a = gr.Dropdown(run.names, value=run.names[-1], label="Revision", elem_id="revision-a")
                    label_a = gr.Label(label="Prediction", elem_id="label-a")
                with gr.Column():
                    revision_b = gr.Dropdown(
                        run.names, value=run.names[0], label="Compared with", elem_id="revision-b"
                    )
                    label_b = gr.Label(label="Prediction", elem_id="label-b")
        with gr.Tab("Teach a new task"):
            gr.Markdown(
                "Train one more task on the latest revision with `NSPTrainer` (CPU), save it as the next stage, and "
                "measure every task on held-out images before and after. Pick bundled classes, or name classes "
                "and upload a handful of images of each (a quarter is held out for measuring)."
            )
            with gr.Row():
                teachable = teachable_classes(run)
                bundled = gr.Dropdown(
                    teachable,
                    value=[value for _, value in teachable[:2]],
                    multiselect=True,
                    label="Bundled classes",
                    elem_id="bundled",
                )
                per_class = gr.Slider(4, 100, value=images_per_class, step=1, label="Training images per class")
            own = []
            with gr.Accordion("…or your own classes", open=False):
                for number in range(1, OWN_CLASSES + 1):
                    with gr.Row():
                        own.append(gr.Textbox(label=f"Class {number} name"))
                        own.append(
                            gr.File(file_count="multiple", file_types=["image"], label=f"Class {number} images")
                        )
            with gr.Row():
                epochs_slider = gr.Slider(1, 20, value=epochs, step=1, label="Epochs")
                without = gr.Checkbox(label="Also train with the projection off (VPT-Seq) to show the forgetting")
            with gr.Row():
                teach_button = gr.Button("Teach", variant="primary", elem_id="teach")
                cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel")
            status = gr.Markdown(elem_id="status")
            lesson = gr.Dataframe(label="Accuracy on held-out images (%)", interactive=False, elem_id="lesson")

        views = [matrix, curves, classes_table, title, revision_a, revision_b, bundled]
        demo.load(run_views, outputs=views, api_visibility="private")
        image.upload(classify, [image, revision_a, top_k], label_a, api_name="classify")
        classify_button.click(
            compare, [image, sketch, revision_a, revision_b, top_k], [label_a, label_b], api_name="compare"
        )
        teach_button.click(
            teach_task,
            [bundled, per_class, *own, epochs_slider, without],
            [status, lesson, *views],
            api_name="teach",
        )
        cancel_button.click(stop, outputs=status, api_name="cancel", queue=False)
    return demo


def launch(
    demo: gr.Blocks, port: int | None = None, server_name: str | None = "127.0.0.1", **kwargs: Any
) -> tuple[Any, str, str]:
    """Serve ``demo`` on ``server_name`` (default 127.0.0.1 only; ``None``: Gradio's choice, the
    ``GRADIO_SERVER_NAME`` a Space sets, else 127.0.0.1), never through a public share link; errors in bad input are
    shown in the page. Fonts are the system's, so the page needs no network. ``kwargs`` go to `gr.Blocks.launch`."""
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])
    return demo.launch(server_name=server_name, server_port=port, share=False, show_error=True, theme=theme, **kwargs)


def sketch_image(value: dict | None) -> Image.Image | None:
    """A drawing as an MNIST-like image: the ink bright on black, cropped, centred, ``28 × 28`` RGB (``None``: no
    drawing)."""
    composite = (value or {}).get("composite")
    if composite is None:
        return None
    composite = composite.convert("RGBA")
    ink = ImageOps.invert(Image.alpha_composite(Image.new("RGBA", composite.size, "white"), composite).convert("L"))
    box = ink.getbbox()
    if box is None:
        return None
    digit = ink.crop(box)
    side = int(max(digit.size) * 1.4) + 1  # MNIST's digits fill about 20 of 28 pixels
    canvas = Image.new("L", (side, side))
    canvas.paste(digit, ((side - digit.width) // 2, (side - digit.height) // 2))
    return canvas.resize((MNIST_SIDE, MNIST_SIDE), Image.Resampling.LANCZOS).convert("RGB")


def run_plots(run: DemoRun, folder: Path) -> tuple[str, str]:
    """PNG files of the latest revision's accuracy matrix and of each task's accuracy after every later task."""
    metrics, record = run.metrics(), run.record()
    name = run.latest.name
    heat_map = plot_accuracy_matrix(metrics, folder / f"matrix-{name}.png", title=record.method)
    return str(heat_map), str(plot_task_curves(metrics, record.tasks, folder / f"curves-{name}.png"))


def plot_task_curves(metrics: ContinualMetrics, tasks: Sequence[Sequence[str]], path: Path) -> Path:
    """One line per task ``j``: its accuracy ``A[t, j]`` (percent) after every task ``t ≥ j``, x = ``t``."""
    figure = Figure(figsize=(6.0, 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    matrix = 100 * metrics.accuracy_matrix
    for j, names in enumerate(tasks[: metrics.num_tasks]):
        axes.plot(range(j, metrics.num_tasks), matrix[j:, j], marker="o", label=f"task {j}: {', '.join(names)}"[:32])
    axes.set_xticks(range(metrics.num_tasks))
    axes.set_xlabel("after training task t")
    axes.set_ylabel("accuracy on the task's test data (%)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return write_atomically(path, buffer.getvalue())


def teachable_classes(run: DemoRun) -> list[tuple[str, str]]:
    """``(label, class name)`` of the bundled classes the latest revision does not know."""
    known = set(run.record().class_names)
    return [(f"{name} ({dataset})", name) for name, dataset in bundled_classes().items() if name not in known]


def revision_table(run: DemoRun) -> dict[str, list]:
    """One row per revision: its name, the classes it added, how many it knows, its accuracy on all seen classes."""
    record, metrics = run.record(), run.metrics()
    accuracies = metrics.incremental_accuracies
    rows = [
        [
            revision.name,
            ", ".join(record.tasks[revision.task]),
            sum(map(len, record.tasks[: revision.task + 1])),
            round(100 * accuracies[revision.task], 2),
        ]
        for revision in run.revisions
    ]
    return {"headers": ["revision", "classes it added", "classes known", "accuracy on all seen (%)"], "data": rows}


def header(run: DemoRun) -> str:
    """The title: the source, its method and where the latest revision stands."""
    record, metrics = run.record(), run.metrics()
    forgetting = "" if metrics.num_tasks < 2 else f", forgetting {100 * metrics.forgetting:.1f} %"
    return (
        f"## {record.method}: `{run.source}`\n{len(run.revisions)} revision(s), the latest `{run.latest.name}` knows "
        f"{len(record.class_names)} classes; accuracy on all seen classes {100 * metrics.final_accuracy:.1f} %"
        f"{forgetting}."
    )


def lesson_summary(lesson: Lesson) -> str:
    """What teaching did, in one paragraph."""
    old = range(lesson.task)
    before = _mean(lesson.before, lesson.held_out[: lesson.task])
    after = _mean([lesson.after[t] for t in old], lesson.held_out[: lesson.task])
    text = (
        f"**Saved `{lesson.stage.name}`** ({', '.join(lesson.classes)}): old tasks {100 * before:.1f} % before → "
        f"{100 * after:.1f} % after; the new task {100 * lesson.after[-1]:.1f} %."
    )
    if lesson.without_projection is not None:
        seq = _mean([lesson.without_projection[t] for t in old], lesson.held_out[: lesson.task])
        text += f" With the projection off the old tasks would be at {100 * seq:.1f} % (not saved)."
    return text


def lesson_table(lesson: Lesson) -> dict[str, list]:
    """One row per task: classes, held-out images, accuracy before, after, and after without the projection."""
    rows = []
    for t, names in enumerate(lesson.tasks):
        before = round(100 * lesson.before[t], 1) if t < lesson.task else None
        seq = round(100 * lesson.without_projection[t], 1) if lesson.without_projection is not None else None
        rows.append([f"task {t}", ", ".join(names), lesson.held_out[t], before, round(100 * lesson.after[t], 1), seq])
    return {
        "headers": ["task", "classes", "held-out images", "before", "after", "after, projection off"],
        "data": rows,
    }


def _mean(values: Sequence[float], weights: Sequence[int]) -> float:
    return sum(v * w for v, w in zip(values, weights)) / max(1, sum(weights))


def _user_errors(function: Any, *args: Any) -> Any:
    """``function(*args)``, a `ValueError` (bad input, named with its fix) shown in the browser."""
    try:
        return function(*args)
    except ValueError as error:
        raise gr.Error(str(error)) from error
