# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The analytic head against an independent NumPy float64 reference, through the tuner, the trainer and the Hub
entry points; bad input changes nothing."""

from __future__ import annotations

import copy
import json
import threading
import warnings

import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model
from testing_utils import blob_images, prompts, tiny_model, to_tensor

import peft_nsp
from peft_nsp import NSPConfig, NSPTrainer
from peft_nsp.tuner import ContinualClassifier
from peft_nsp.tuner.analytic_head import (
    DEFAULT_RIDGE_GRID,
    AnalyticClassifier,
    fit_softmax_scale,
    holdout_mask,
    select_ridge,
)


WIDTH = 48


def reference_solution(features: np.ndarray, columns: np.ndarray, projection: np.ndarray, ridge: float) -> np.ndarray:
    """``(relu(XR)ᵀ relu(XR) + λI)⁻¹ relu(XR)ᵀ Y`` in float64 with NumPy."""
    h = np.maximum(features @ projection, 0.0)
    targets = np.eye(columns.max() + 1)[columns]
    return np.linalg.solve(h.T @ h + ridge * np.eye(h.shape[1]), h.T @ targets)


def task_data(num_tasks: int = 3, per_task: int = 40, classes: int = 3, dim: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    tasks = []
    for t in range(num_tasks):
        columns = rng.integers(0, classes, per_task)
        features = rng.normal(size=(per_task, dim)) + np.eye(dim)[columns + classes * t] * 3
        tasks.append((features, columns))
    return tasks


def test_after_t_tasks_the_head_is_the_joint_closed_form_solution():
    tasks = task_data()
    head = AnalyticClassifier(12, WIDTH, ridge=0.5, seed=3).eval()
    projection = head.state.projection.double().numpy()
    seen_x, seen_y = [], []
    for t, (features, columns) in enumerate(tasks):
        head.add_task(3)
        head.fit_task(torch.tensor(features, dtype=torch.float32), torch.tensor(columns))
        seen_x.append(features.astype(np.float32).astype(np.float64))
        seen_y.append(columns + 3 * t)
        joint = reference_solution(np.concatenate(seen_x), np.concatenate(seen_y), projection, 0.5)
        ours = torch.cat([task.weight for task in head.tasks], dim=1).double().numpy()
        np.testing.assert_allclose(ours, joint, rtol=2e-4, atol=1e-6)
    probe = torch.tensor(tasks[0][0][:5], dtype=torch.float32)
    expected = np.maximum(probe.double().numpy() @ projection, 0) @ joint
    np.testing.assert_allclose(head.ridge_outputs(probe).double().numpy(), expected, rtol=1e-4, atol=1e-5)


def test_ridge_is_chosen_by_the_held_out_error_of_a_fit_on_the_rest():
    features, columns = task_data(num_tasks=1, per_task=60)[0]
    h = np.maximum(features @ np.random.default_rng(1).normal(size=(12, WIDTH)), 0)
    targets = np.eye(3)[columns]
    held = holdout_mask(torch.arange(60)).numpy()
    errors = []
    for ridge in DEFAULT_RIDGE_GRID:
        w = np.linalg.solve(h[~held].T @ h[~held] + ridge * np.eye(WIDTH), h[~held].T @ targets[~held])
        errors.append(((h[held] @ w - targets[held]) ** 2).mean())
    chosen = select_ridge(torch.tensor(h), torch.tensor(targets), torch.tensor(held), DEFAULT_RIDGE_GRID)
    assert chosen == DEFAULT_RIDGE_GRID[int(np.argmin(errors))]
    assert held.sum() == 12  # every fifth sample


def test_the_softmax_scale_is_fitted_on_held_out_samples_left_out_of_the_solution():
    tasks = task_data(num_tasks=2, per_task=40)
    head = AnalyticClassifier(12, WIDTH, ridge=0.5, seed=3).eval()
    projection = head.state.projection.double().numpy()
    for t, (features, columns) in enumerate(tasks):
        head.add_task(3)
        head.fit_task(torch.tensor(features, dtype=torch.float32), torch.tensor(columns))
    x = np.concatenate([f.astype(np.float32).astype(np.float64) for f, _ in tasks])
    y = np.concatenate([c + 3 * t for t, (_, c) in enumerate(tasks)])
    held = np.zeros(len(y), bool)
    held[40:][holdout_mask(torch.arange(40)).numpy()] = True  # the newest task's held-out samples
    without = reference_solution(x[~held], y[~held], projection, 0.5)
    outputs = np.maximum(x[held] @ projection, 0) @ without
    expected = fit_softmax_scale(torch.tensor(outputs), torch.tensor(y[held]))
    assert float(head.state.scale) == pytest.approx(expected)


def test_softmax_scale_minimises_the_held_out_cross_entropy():
    rng = np.random.default_rng(0)
    outputs, columns = rng.normal(size=(30, 4)), rng.integers(0, 4, 30)
    outputs[np.arange(30), columns] += 0.4

    def nll(scale: float) -> float:
        z = scale * outputs
        z = z - z.max(1, keepdims=True)
        return float(-(z[np.arange(30), columns] - np.log(np.exp(z).sum(1))).mean())

    chosen = fit_softmax_scale(torch.tensor(outputs), torch.tensor(columns))
    grid = np.logspace(-1, 4, 101)
    assert chosen == pytest.approx(grid[int(np.argmin([nll(s) for s in grid]))])


def _analytic_model(**overrides) -> PeftModel:
    config = dict(classifier="analytic", analytic_projection_size=WIDTH) | overrides
    return get_peft_model(tiny_model(), peft_nsp.VPTNSPConfig(**config))


def _blob_task(classes: list[int], per_class: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    data = blob_images(max(classes) + 1, per_class)
    x, y = to_tensor(data["image"]), torch.tensor(data["label"])
    keep = torch.isin(y, torch.tensor(classes))
    return x[keep], y[keep]


def _batches(x: torch.Tensor, y: torch.Tensor, size: int = 7) -> list[dict[str, torch.Tensor]]:
    return [{"pixel_values": a, "labels": b} for a, b in zip(x.split(size), y.split(size))]


def _pooled(model: PeftModel, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.base_model.model(pixel_values=x).last_hidden_state[:, 0].double().numpy()


def test_the_tuner_fits_in_the_statistics_pass_and_predicts_the_joint_solution():
    model = _analytic_model(analytic_ridge=0.3).eval()
    tuner = model.base_model
    seen_x, seen_y = [], []
    for classes in ([0, 1, 2], [3, 4]):
        tuner.add_task(len(classes))
        x, y = _blob_task(classes)
        tuner.update_null_space(_batches(x, y))
        seen_x.append(x)
        seen_y.append(y)
    # The prompts did not change, so every task's features are those of the final model.
    features = _pooled(model, torch.cat(seen_x)).astype(np.float32).astype(np.float64)
    projection = tuner.task_heads().state.projection.double().numpy()
    joint = reference_solution(features, torch.cat(seen_y).numpy(), projection, 0.3)
    probe = torch.cat(seen_x)[:9]
    expected = np.maximum(_pooled(model, probe) @ projection, 0) @ joint
    with torch.no_grad():
        logits = model(pixel_values=probe).logits.double().numpy()
    scale = float(tuner.task_heads().state.scale)
    np.testing.assert_allclose(logits / scale, expected, rtol=1e-3, atol=1e-4)
    assert tuner.tasks_seen() == 2 and tuner.task_heads().fitted_tasks == 2


def test_training_and_a_task_not_fitted_yet_answer_with_the_training_heads():
    """Training mode, and evaluation during a task (before its statistics pass fits it), answer with the linear
    training heads over every seen class, never with the unfitted task's zero columns; once fitted, the ridge head."""
    model = _analytic_model(analytic_ridge=0.3)
    tuner = model.base_model
    tuner.add_task(3)
    x, y = _blob_task([0, 1, 2])
    model.train()
    pooled = torch.tensor(_pooled(model, x), dtype=torch.float32)
    training = model(pixel_values=x).logits
    torch.testing.assert_close(training, tuner.task_heads().training_heads(pooled), rtol=1e-5, atol=1e-5)
    model.eval()
    torch.testing.assert_close(model(pixel_values=x).logits, training, rtol=1e-5, atol=1e-5)  # not fitted yet
    tuner.update_null_space(_batches(x, y))
    head = tuner.task_heads()
    fitted = model(pixel_values=x).logits
    torch.testing.assert_close(fitted, head.state.scale.float() * head.ridge_outputs(pooled), rtol=1e-4, atol=1e-4)
    tuner.add_task(2)  # the next task, mid-training: all five columns from the training heads again
    mid_task = model(pixel_values=x).logits
    assert mid_task.shape == (len(x), 5)
    torch.testing.assert_close(mid_task, head.training_heads(pooled), rtol=1e-5, atol=1e-5)


def test_save_load_continue_round_trip_gives_identical_logits(tmp_path):
    model = _analytic_model().eval()
    tuner = model.base_model
    tuner.add_task(3)
    x0, y0 = _blob_task([0, 1, 2])
    tuner.update_null_space(_batches(x0, y0))
    model.save_pretrained(tmp_path / "task-0")
    x1, y1 = _blob_task([3, 4, 5])
    probe = torch.cat([x0, x1])[::3]
    loaded = PeftModel.from_pretrained(tiny_model(), tmp_path / "task-0", is_trainable=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=probe).logits, model(pixel_values=probe).logits, rtol=0, atol=0)
    for continued in (model, loaded):
        continued.base_model.add_task(3)
        continued.base_model.update_null_space(_batches(x1, y1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=probe).logits, model(pixel_values=probe).logits, rtol=0, atol=0)


def test_two_processes_give_the_solve_of_one():
    """Two ranks (threads) each see every other sample; a summing all-reduce joins them."""
    x, y = _blob_task([0, 1, 2, 3])
    single = _analytic_model().eval()
    single.base_model.add_task(4)
    single.base_model.update_null_space(_batches(x, y))
    ranks = [copy.deepcopy(_analytic_model()).eval() for _ in range(2)]
    for rank in ranks:
        rank.base_model.add_task(4)
    barrier, slots = threading.Barrier(2), [None, None]

    def all_reduce(rank: int, tensor: torch.Tensor) -> torch.Tensor:
        slots[rank] = tensor
        barrier.wait()
        total = slots[0] + slots[1]
        barrier.wait()
        return total

    errors = []

    def work(rank: int) -> None:
        try:
            indices = range(rank, len(y), 2)
            ranks[rank].base_model.update_null_space(
                _batches(x[rank::2], y[rank::2]), reduce_fn=lambda t: all_reduce(rank, t), sample_indices=indices
            )
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    with torch.no_grad():
        expected = single(pixel_values=x).logits
        for rank in ranks:
            torch.testing.assert_close(rank(pixel_values=x).logits, expected, rtol=1e-5, atol=1e-5)


def _adapter_state(model: PeftModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.base_model.model.state_dict().items() if "vpt_nsp" in k}


def _assert_unchanged(before: dict[str, torch.Tensor], model: PeftModel) -> None:
    after = _adapter_state(model)
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]) or (value.isnan() == after[key].isnan()).all(), key


def test_non_finite_features_change_nothing():
    model = _analytic_model().eval()
    model.base_model.add_task(3)
    x, y = _blob_task([0, 1, 2])
    x[4, 0, 0, 0] = float("nan")
    before = _adapter_state(model)
    with pytest.raises(ValueError, match="NaN"):
        model.base_model.update_null_space(_batches(x, y))
    _assert_unchanged(before, model)


def test_a_singular_system_at_ridge_zero_changes_nothing():
    model = _analytic_model(analytic_ridge=0.0).eval()  # 48 random features, 30 samples: G is singular
    model.base_model.add_task(3)
    x, y = _blob_task([0, 1, 2])
    before = _adapter_state(model)
    with pytest.raises(ValueError, match="singular"):
        model.base_model.update_null_space(_batches(x, y))
    _assert_unchanged(before, model)


def test_a_task_cannot_be_fitted_twice_nor_with_classes_of_another_task():
    model = _analytic_model().eval()
    tuner = model.base_model
    tuner.add_task(3)
    x, y = _blob_task([0, 1, 2])
    tuner.update_null_space(_batches(x, y))
    before = _adapter_state(model)
    with pytest.raises(ValueError, match="fitted all 1 task"):
        tuner.update_null_space(_batches(x, y))
    _assert_unchanged(before, model)
    tuner.add_task(2)
    before = _adapter_state(model)
    with pytest.raises(ValueError, match="belong to no task head|classes of this task|outside"):
        tuner.update_null_space(_batches(x, y))  # classes 0-2 belong to task 0
    _assert_unchanged(before, model)
    with pytest.raises(ValueError, match="already belong"):
        tuner.add_task([0, 1])


def test_sample_indices_that_repeat_across_processes_are_refused():
    model = _analytic_model().eval()
    model.base_model.add_task(3)
    x, y = _blob_task([0, 1, 2])
    with pytest.raises(ValueError, match="sample_indices"):
        model.base_model.update_null_space(_batches(x, y), sample_indices=[0] * len(y))


def test_trainer_trains_fits_and_the_pipeline_names_calibrated_probabilities(tmp_path):
    from transformers import pipeline

    data = blob_images(4, 10)
    args = dict(num_train_epochs=1, per_device_train_batch_size=8, report_to="none", use_cpu=True, learning_rate=0.01)
    trainer = NSPTrainer(
        tiny_model(),
        NSPConfig(str(tmp_path / "run"), **args),
        train_dataset=data,
        train_transform=to_tensor,
        peft_config=peft_nsp.VPTNSPConfig(classifier="analytic", analytic_projection_size=WIDTH),
    )
    # evaluate() before the task's statistics pass scores the linear training heads, over every class of the task.
    before = trainer.evaluate(data)
    head = trainer.nsp_model.task_heads()
    with torch.no_grad():
        columns = trainer.nsp_model.class_ids_to_columns(torch.tensor(data["label"]))
        pooled = trainer.model.base_model.model(pixel_values=to_tensor(data["image"])).last_hidden_state[:, 0]
        expected = (head.training_heads(pooled).argmax(-1) == columns).double().mean()
    assert before["eval_accuracy"] == pytest.approx(float(expected))
    trainer.train()
    tuner = trainer.nsp_model
    assert tuner.task_heads().fitted_tasks == 1
    model = trainer.model.eval()
    x = to_tensor(data["image"][:4])
    with torch.no_grad():
        probabilities = model(pixel_values=x).logits.softmax(-1)
    top = probabilities.argmax(-1)
    classify = pipeline("image-classification", model=model, image_processor=_processor(), device="cpu")
    for image, column, probability in zip(data["image"][:4], top.tolist(), probabilities):
        answer = classify(image, top_k=1)[0]
        assert answer["label"] == tuner.class_names()[column]
        assert answer["score"] == pytest.approx(float(probability[column]), abs=1e-4)


def test_classifier_alignment_with_an_analytic_head_is_refused(tmp_path):
    with pytest.raises(ValueError, match="analytic"):
        NSPTrainer(
            tiny_model(),
            NSPConfig(str(tmp_path), classifier_alignment=True, report_to="none"),
            train_dataset=blob_images(2, 4),
            train_transform=to_tensor,
            peft_config=peft_nsp.VPTNSPConfig(classifier="analytic", analytic_projection_size=WIDTH),
        )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"analytic_projection_size": -1}, "analytic_projection_size"),
        ({"analytic_ridge": float("nan")}, "analytic_ridge"),
        ({"analytic_ridge_grid": []}, "analytic_ridge_grid"),
    ],
)
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        peft_nsp.VPTNSPConfig(classifier="analytic", **overrides)


def _processor():
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def test_only_ridges_the_float64_solve_can_take_are_tried():
    """90 samples, 5000 random features: G has rank ≤ 90, and λ below 10⁻¹² of trace(G) makes its solve singular."""
    rng = np.random.default_rng(0)
    features = torch.tensor(rng.normal(size=(90, 384)) * 10, dtype=torch.float32)
    columns = torch.tensor(rng.integers(0, 2, 90))
    floor = 1e-12 * float((AnalyticClassifier(384, 5000, seed=0).features(features).double() ** 2).sum())
    tiny = AnalyticClassifier(384, 5000, ridge_grid=(floor / 100,), seed=0).eval()
    tiny.add_task(2)
    with pytest.raises(ValueError, match="below .* give larger candidates"):
        tiny.fit_task(features, columns)
    assert tiny.fitted_tasks == 0
    head = AnalyticClassifier(384, 5000, ridge_grid=(floor / 100, floor * 10), seed=0).eval()
    head.add_task(2)
    head.fit_task(features, columns)
    assert float(head.state.ridge) == pytest.approx(floor * 10)
    assert torch.isfinite(head.ridge_outputs(features)).all()


def test_a_forward_fn_and_labels_fn_read_any_batch_layout_as_the_default_reads_its_own():
    """`update_null_space(forward_fn=, labels_fn=)`, as PEFT's eva takes a `forward_fn`: batches of another layout
    give bit-identical projectors and analytic head; the default refuses that layout, naming the fix."""
    default = _analytic_model(analytic_ridge=0.3).eval()
    default.base_model.add_task(3)
    custom = copy.deepcopy(default)
    x, y = _blob_task([0, 1, 2])
    default.base_model.update_null_space(_batches(x, y))
    other_layout = [{"image": a, "target": b.tolist()} for a, b in zip(x.split(7), y.split(7))]
    with pytest.raises(ValueError, match="pass `forward_fn=`"):
        copy.deepcopy(custom).base_model.update_null_space(other_layout)
    with pytest.raises(ValueError, match="`forward_kwargs` or `forward_fn`, not both"):
        custom.base_model.update_null_space(
            other_layout, forward_fn=lambda m, b: None, forward_kwargs={"interpolate_pos_encoding": True}
        )
    custom.base_model.update_null_space(
        other_layout,
        forward_fn=lambda model, batch: model(pixel_values=batch["image"]),
        labels_fn=lambda batch: torch.tensor(batch["target"]),
    )
    expected, got = default.base_model.state_dict(), custom.base_model.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert custom.base_model.task_heads().fitted_tasks == 1


# ----------------------------------------------------------------------------------------------------------
# the default classifier: the analytic head for new adapters, linear adapters keep their meaning
# ----------------------------------------------------------------------------------------------------------
def test_a_default_config_is_the_analytic_head_and_warns_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = peft_nsp.VPTNSPConfig()
    assert config.classifier == "analytic" and config.analytic_projection_size == 5000
    head = get_peft_model(tiny_model(), config).base_model.task_heads()
    assert isinstance(head, AnalyticClassifier) and head.state.projection.shape == (32, 5000)


def test_the_default_head_asked_to_fit_batches_without_labels_names_the_fixes_and_changes_nothing():
    model = get_peft_model(tiny_model(), peft_nsp.VPTNSPConfig(analytic_projection_size=WIDTH)).base_model
    model.add_task(2)
    head = model.task_heads()
    with pytest.raises(ValueError, match=r"classifier='analytic'.*needs labels.*`labels_fn=`.*classifier='linear'"):
        model.update_null_space([torch.rand(4, 3, 16, 16)])
    assert head.fitted_tasks == 0 and model.tasks_seen() == 0


def test_a_config_without_classifier_trained_by_the_trainer_ends_with_the_closed_form_head(tmp_path):
    """No `classifier=`: `train()` trains the prompts, then its statistics pass fits the ridge head, whose
    predictions after the task are the NumPy float64 closed form on the final model's features."""
    data = blob_images(3, 10)
    trainer = NSPTrainer(
        tiny_model(),
        NSPConfig(str(tmp_path / "run"), num_train_epochs=2, per_device_train_batch_size=8, report_to="none"),
        train_dataset=data,
        train_transform=to_tensor,
        peft_config=peft_nsp.VPTNSPConfig(analytic_projection_size=WIDTH),  # the default M = 5000 fits in ~10 s
    )
    prompts_before = [p.detach().clone() for p in prompts(trainer.model)]
    trainer.train()
    tuner, model = trainer.nsp_model, trainer.model.eval()
    head = tuner.task_heads()
    assert isinstance(head, AnalyticClassifier) and head.fitted_tasks == 1
    assert any(not torch.equal(a, b) for a, b in zip(prompts_before, prompts(model)))  # the prompts trained
    x, labels = to_tensor(data["image"]), torch.tensor(data["label"])
    columns = tuner.class_ids_to_columns(labels).numpy()
    ridge = float(head.state.ridge)
    assert ridge in DEFAULT_RIDGE_GRID
    projection = head.state.projection.double().numpy()
    features = _pooled(model, x).astype(np.float32).astype(np.float64)
    solution = reference_solution(features, columns, projection, ridge)
    expected = np.maximum(features @ projection, 0.0) @ solution
    with torch.no_grad():
        logits = model(pixel_values=x).logits.double().numpy()
    np.testing.assert_allclose(logits / float(head.state.scale), expected, rtol=1e-3, atol=1e-4)
    trainer.save_model(str(tmp_path / "stage"))
    assert json.loads((tmp_path / "stage" / "adapter_config.json").read_text())["classifier"] == "analytic"


def test_an_adapter_saved_with_linear_heads_loads_as_linear_next_to_a_default_one(tmp_path):
    """Adapters written before the default changed say `"classifier": "linear"` in adapter_config.json (PEFT
    writes every field): they load with their linear heads, also into a model whose own adapter is analytic."""
    linear = get_peft_model(tiny_model(), peft_nsp.VPTNSPConfig(prompt_length=2, classifier="linear")).eval()
    linear.base_model.add_task(["a", "b", "c"])
    x, y = _blob_task([0, 1, 2])
    linear.base_model.update_null_space([x])
    with torch.no_grad():
        expected = linear(pixel_values=x).logits
    linear.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["classifier"] == "linear"
    loaded = PeftModel.from_pretrained(tiny_model(), tmp_path)
    assert loaded.peft_config["default"].classifier == "linear"
    assert isinstance(loaded.base_model.task_heads(), ContinualClassifier)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).logits, expected, rtol=0, atol=0)
    mixed = get_peft_model(tiny_model(), peft_nsp.VPTNSPConfig(analytic_projection_size=WIDTH)).eval()
    mixed.load_adapter(tmp_path, adapter_name="old")
    mixed.set_adapter("old")
    assert isinstance(mixed.base_model.task_heads("default"), AnalyticClassifier)
    assert isinstance(mixed.base_model.task_heads("old"), ContinualClassifier)
    with torch.no_grad():
        torch.testing.assert_close(mixed(pixel_values=x).logits, expected, rtol=0, atol=0)
