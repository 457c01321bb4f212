# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The projected optimizer update, checked against an unprojected twin, and the paper's claim measured."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import get_peft_model
from testing_utils import prompted_layers, prompts, randomize_layernorms, tiny_model

from peft_nsp import VPTNSPConfig


def model_after_one_task(images: torch.Tensor, **config_kwargs):
    """Prompts perturbed as if trained on task 1, statistics folded in, head of task 2 added."""
    model = get_peft_model(
        tiny_model("vit", seed=3), VPTNSPConfig(prompt_length=3, classifier="linear", **config_kwargs)
    )
    model.add_task(3)
    model.update_null_space([images])
    model.add_task(3)
    return model


def loss_on(model, images: torch.Tensor) -> torch.Tensor:
    labels = torch.arange(images.shape[0]) % 3
    return torch.nn.functional.cross_entropy(model(pixel_values=images).logits[:, 3:], labels)


def trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def test_adam_update_is_replaced_by_its_projection(images):
    """p_after = p_before + Proj2 · u · Proj1, u taken from an identical unprojected optimizer."""
    model = model_after_one_task(images)
    twin = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(trainable(model), lr=0.05, weight_decay=0.01)
    twin_optimizer = torch.optim.AdamW(trainable(twin), lr=0.05, weight_decay=0.01)
    projection = model.attach_null_space_projection(optimizer)
    before = [p.detach().clone() for p in prompts(model)]
    for m, opt in ((model, optimizer), (twin, twin_optimizer)):
        loss_on(m, images).backward()
        opt.step()
    assert projection.steps_projected == 1
    for layer, start, free in zip(prompted_layers(model), before, prompts(twin)):
        state = layer.vpt_nsp_null_space["default"]
        update = (free - start).double()
        expected = start.double() + state.prompt_projector.double() @ update @ state.key_projector.double()
        torch.testing.assert_close(layer.vpt_nsp_prompt["default"].double(), expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(layer.vpt_nsp_prompt["default"], free)
    # The head of the current task trains freely: identical to the twin's.
    torch.testing.assert_close(
        model.base_model.vpt_nsp_head["default"].heads[1].weight,
        twin.base_model.vpt_nsp_head["default"].heads[1].weight,
    )


def test_sgd_gradient_mode_equals_update_mode(images):
    results = []
    for mode in ("gradient", "update"):
        model = model_after_one_task(images)
        optimizer = torch.optim.SGD(trainable(model), lr=0.1)
        model.attach_null_space_projection(optimizer, mode=mode)
        for _ in range(3):
            optimizer.zero_grad()
            loss_on(model, images).backward()
            optimizer.step()
        results.append([p.detach().clone() for p in prompts(model)])
    for gradient_mode, update_mode in zip(*results):
        torch.testing.assert_close(gradient_mode, update_mode, rtol=1e-5, atol=1e-6)


def test_no_projection_before_the_first_projector(images):
    model = get_peft_model(tiny_model("vit"), VPTNSPConfig(prompt_length=3, classifier="linear"))
    model.add_task(3)
    twin = copy.deepcopy(model)
    projection = model.attach_null_space_projection(torch.optim.Adam(trainable(model), lr=0.1))
    twin_optimizer = torch.optim.Adam(trainable(twin), lr=0.1)
    for m, opt in ((model, projection._optimizer), (twin, twin_optimizer)):
        torch.nn.functional.cross_entropy(m(pixel_values=images).logits, torch.arange(6) % 3).backward()
        opt.step()
    assert projection.steps_projected == 0
    for a, b in zip(prompts(model), prompts(twin)):
        assert torch.equal(a, b)


def test_only_projected_layers_are_projected(images):
    model = model_after_one_task(images, projected_layers=[1])
    targets = model.projection_targets()
    assert len(targets) == 1 and targets[0].parameter is prompts(model)[1]


def test_skipped_fp16_step_changes_nothing(images):
    """A GradScaler that finds an inf never calls `optimizer.step`: no snapshot, no projection, no change."""
    model = model_after_one_task(images)
    optimizer = torch.optim.Adam(trainable(model), lr=0.1)
    projection = model.attach_null_space_projection(optimizer)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    before = [p.detach().clone() for p in trainable(model)]
    scaler.scale(loss_on(model, images)).backward()
    prompts(model)[0].grad[0, 0] = float("inf")
    scaler.step(optimizer)
    scaler.update()
    assert projection.steps_projected == 0 and projection._snapshots == []
    for a, b in zip(trainable(model), before):
        assert torch.equal(a, b)
    assert scaler.get_scale() < 2.0**8
    # The next, finite step is projected normally.
    optimizer.zero_grad()
    scaler.scale(loss_on(model, images)).backward()
    scaler.step(optimizer)
    scaler.update()
    assert projection.steps_projected == 1


def test_attaching_twice_is_refused_and_remove_detaches(images):
    model = model_after_one_task(images)
    optimizer = torch.optim.Adam(trainable(model), lr=0.1)
    projection = model.attach_null_space_projection(optimizer)
    with pytest.raises(ValueError, match="already has a null-space projection"):
        model.attach_null_space_projection(optimizer)
    projection.remove()
    model.attach_null_space_projection(optimizer).remove()
    with pytest.raises(ValueError, match="Projection `mode` must be one of"):
        model.attach_null_space_projection(optimizer, mode="momentum")


# ---------------------------------------------------------------------------------------------- the claim
def _claim_setup():
    torch.manual_seed(0)
    base = tiny_model(
        "vit", seed=11, hidden_size=64, num_attention_heads=4, num_hidden_layers=3, intermediate_size=128
    )
    randomize_layernorms(base, seed=5)
    generator = torch.Generator().manual_seed(7)
    old_images = torch.randn(48, 3, 16, 16, generator=generator)
    new_images = 0.7 * torch.randn(48, 3, 16, 16, generator=generator) + 0.5
    old_labels = torch.randint(0, 4, (48,), generator=generator)
    new_labels = torch.randint(0, 4, (48,), generator=generator)
    return base, old_images, old_labels, new_images, new_labels


def _old_features(model, images):
    with torch.no_grad():
        return model(pixel_values=images).last_hidden_state[:, 0]


def _train_new_task(model, images, labels, steps, project: bool, ln_weight: float):
    optimizer = torch.optim.Adam(trainable(model), lr=0.01)
    if project:
        model.attach_null_space_projection(optimizer)
    movement = 0.0
    for _ in range(steps):
        before = [p.detach().clone() for p in prompts(model)]
        optimizer.zero_grad()
        logits = model(pixel_values=images).logits[:, 4:]
        loss = torch.nn.functional.cross_entropy(logits / 2.0, labels)
        loss = loss + ln_weight * model.layernorm_consistency_loss()
        loss.backward()
        optimizer.step()
        movement += sum(float((p.detach() - b).norm()) for p, b in zip(prompts(model), before))
    return movement


def test_projection_protects_old_task_features_as_the_paper_claims():
    """Same K Adam steps on new data with and without projection (η = 1), from the same task-1 model."""
    base, old_images, old_labels, new_images, new_labels = _claim_setup()
    model = get_peft_model(base, VPTNSPConfig(prompt_length=4, eta1=1.0, eta2=1.0, classifier="linear"))
    model.add_task(4)
    optimizer = torch.optim.Adam(trainable(model), lr=0.01)
    for _ in range(20):  # task 1: train prompts and head on old data
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(pixel_values=old_images).logits, old_labels).backward()
        optimizer.step()
    model.update_null_space([old_images[:24], old_images[24:]])
    model.add_task(4)
    reference = _old_features(model, old_images)
    drift, movement = {}, {}
    for project in (False, True):
        run = copy.deepcopy(model)
        movement[project] = _train_new_task(run, new_images, new_labels, steps=15, project=project, ln_weight=0.0)
        drift[project] = float((_old_features(run, old_images) - reference).norm(dim=-1).mean())
    equal_steps = drift[False] / drift[True]
    per_movement = (drift[False] / movement[False]) / (drift[True] / movement[True])
    print(
        f"\nold-feature drift Seq/NSP at equal steps: {equal_steps:.1f}x; per unit of prompt movement: "
        f"{per_movement:.1f}x (movement Seq {movement[False]:.3f}, NSP {movement[True]:.4f})"
    )
    assert equal_steps >= 20
    assert per_movement >= 2


def test_layernorm_loss_keeps_prompt_statistics():
    base, old_images, _, new_images, new_labels = _claim_setup()
    model = get_peft_model(base, VPTNSPConfig(prompt_length=4, classifier="linear"))
    model.add_task(4)
    model.update_null_space([old_images])
    model.add_task(4)
    gaps = {}
    for weight in (0.0, 1.0):
        run = copy.deepcopy(model)
        _train_new_task(run, new_images, new_labels, steps=15, project=False, ln_weight=weight)
        gaps[weight] = 0.0
        for layer in prompted_layers(run):
            prompt, old = layer.vpt_nsp_prompt["default"], layer.vpt_nsp_null_space["default"].previous_prompt
            prompt = prompt.detach()
            gaps[weight] += float((prompt.mean(-1) - old.mean(-1)).abs().sum())
            gaps[weight] += float((prompt.std(-1, correction=0) - old.std(-1, correction=0)).abs().sum())
    print(f"\nprompt mean/std drift: λ=0 {gaps[0.0]:.4f}, λ=1 {gaps[1.0]:.4f}")
    assert gaps[1.0] < 0.5 * gaps[0.0]
