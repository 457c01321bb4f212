# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""NullSpaceTrainer: projection per optimizer step, fp16 skips, gradient accumulation, optimizers."""

from __future__ import annotations

import pytest
import torch
from accelerate.optimizer import AcceleratedOptimizer
from conftest import tiny_model
from peft import get_peft_model
from synthetic import blob_images, to_tensor
from transformers import TrainerCallback

from peft_nsp import VPTNSPConfig, VPTNSPLayer
from peft_nsp.continual.data import TaskCollator
from peft_nsp.trainer import NSPTrainingArguments, NullSpaceTrainer


def second_task_model():
    """A model whose first task is folded in, with the head of task 2 (classes 2, 3) added."""
    model = get_peft_model(tiny_model("vit", seed=4), VPTNSPConfig(prompt_length=2))
    model.add_task([0, 1])
    model.update_null_space([to_tensor(blob_images(2, 4)["image"])])
    model.add_task([2, 3])
    return model


def task_two_data(per_class: int = 4):
    data = blob_images(4, per_class, seed=2)
    return data.select([i for i, label in enumerate(data["label"]) if label >= 2])


def make_trainer(tmp_path, model=None, callbacks=(), **kwargs) -> NullSpaceTrainer:
    defaults = dict(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
        learning_rate=0.05, per_device_train_batch_size=2, logging_steps=1,
    )
    defaults.update(kwargs)
    return NullSpaceTrainer(
        model or second_task_model(),
        NSPTrainingArguments(**defaults),
        train_dataset=task_two_data(),
        data_collator=TaskCollator(to_tensor, task_classes=[2, 3]),
        callbacks=list(callbacks),
    )


class CountSteps(TrainerCallback):
    def __init__(self):
        self.optimizer_steps = 0

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.optimizer_steps += 1


@pytest.mark.parametrize("accumulation", [1, 4])
def test_projection_runs_once_per_optimizer_step(tmp_path, accumulation):
    counter = CountSteps()
    trainer = make_trainer(tmp_path, callbacks=[counter], gradient_accumulation_steps=accumulation, num_train_epochs=2)
    trainer.train()
    # 8 samples, batch 2: 4 micro-batches per epoch → 4 or 1 optimizer step(s) per epoch.
    assert trainer.state.global_step == 2 * 4 // accumulation
    assert trainer.projection.steps_projected == trainer.state.global_step == counter.optimizer_steps


def test_fp16_overflow_step_is_not_projected_and_changes_nothing():
    """accelerate's AcceleratedOptimizer + a GradScaler finding an inf: the step and its hooks are skipped."""
    model = second_task_model()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    projection = model.attach_null_space_projection(optimizer)
    scaler = torch.amp.GradScaler("cpu")
    wrapped = AcceleratedOptimizer(optimizer, device_placement=False, scaler=scaler)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    images = to_tensor(task_two_data()["image"])
    loss = model(pixel_values=images).logits.sum()
    scaler.scale(loss).backward()
    next(m for m in model.modules() if isinstance(m, VPTNSPLayer)).vpt_nsp_prompt["default"].grad[0, 0] = float("inf")
    wrapped.step()
    assert wrapped.step_was_skipped
    assert projection.steps_projected == 0
    for name, param in model.named_parameters():
        if name in before:
            assert torch.equal(param, before[name]), name
    wrapped.zero_grad()
    scaler.scale(model(pixel_values=images).logits.sum()).backward()
    wrapped.step()
    assert not wrapped.step_was_skipped and projection.steps_projected == 1


def prompts_after(trainer) -> list[torch.Tensor]:
    trainer.train()
    return [m.vpt_nsp_prompt["default"].detach().clone() for m in trainer.model.modules() if isinstance(m, VPTNSPLayer)]


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    """GA=4 × batch 2 must give the update of one batch of 8 (the per-batch-mean loss is divided by GA)."""
    big = prompts_after(make_trainer(tmp_path / "a", optim="sgd", max_steps=1, per_device_train_batch_size=8))
    accumulated = prompts_after(
        make_trainer(tmp_path / "b", optim="sgd", max_steps=1, per_device_train_batch_size=2,
                     gradient_accumulation_steps=4)
    )
    for a, b in zip(big, accumulated):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_sgd_gradient_and_update_modes_agree_in_the_trainer(tmp_path):
    runs = [
        prompts_after(make_trainer(tmp_path / mode, optim="sgd", num_train_epochs=2, projection_mode=mode))
        for mode in ("gradient", "update")
    ]
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_projection_off_is_plain_training_and_custom_optimizers_work(tmp_path):
    trainer = make_trainer(tmp_path, projection=False, num_train_epochs=1)
    trainer.train()
    assert trainer.projection is None
    model = second_task_model()
    optimizer = torch.optim.RMSprop([p for p in model.parameters() if p.requires_grad], lr=0.01)
    trainer = make_trainer(tmp_path / "custom", model=model, num_train_epochs=1)
    trainer.optimizer = optimizer
    trainer.train()
    assert trainer.projection.steps_projected == trainer.state.global_step > 0


def test_loss_is_temperature_scaled_ce_on_the_newest_head_plus_ln_term(tmp_path):
    trainer = make_trainer(tmp_path, temperature=4.0, ln_loss_weight=0.5)
    model = trainer.model
    with torch.no_grad():  # move prompts so the LayerNorm term is non-zero
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.2)
    batch = TaskCollator(to_tensor, task_classes=[2, 3])(list(task_two_data()))
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        logits = model(pixel_values=batch["pixel_values"]).logits[:, 2:4]
        ce = torch.nn.functional.cross_entropy(logits / 4.0, batch["labels"])
        ln = 0.0
        for layer in (m for m in model.modules() if isinstance(m, VPTNSPLayer)):
            p, old = layer.vpt_nsp_prompt["default"], layer.vpt_nsp_null_space["default"].previous_prompt
            ln += (p.mean(-1) - old.mean(-1)).abs().mean() + (p.std(-1, correction=0) - old.std(-1, correction=0)).abs().mean()
    torch.testing.assert_close(loss, ce + 0.5 * ln)


def test_trainer_input_errors(tmp_path):
    with pytest.raises(ValueError, match="must be `NSPTrainingArguments`"):
        from transformers import TrainingArguments

        NullSpaceTrainer(second_task_model(), TrainingArguments(output_dir=str(tmp_path), report_to="none"))
    with pytest.raises(ValueError, match="PeftModel with a `vpt_nsp` adapter"):
        NullSpaceTrainer(tiny_model("vit"), NSPTrainingArguments(output_dir=str(tmp_path), report_to="none"))
    with pytest.raises(ValueError, match="no task head"):
        NullSpaceTrainer(get_peft_model(tiny_model("vit"), VPTNSPConfig()),
                         NSPTrainingArguments(output_dir=str(tmp_path), report_to="none"))
    with pytest.raises(ValueError, match="`temperature` must be > 0"):
        NSPTrainingArguments(output_dir=str(tmp_path), temperature=0)
    with pytest.raises(ValueError, match="`projection_mode` must be one of"):
        NSPTrainingArguments(output_dir=str(tmp_path), projection_mode="both")
    with pytest.raises(ValueError, match=r"Labels \[0\] are not classes of the task"):
        TaskCollator(to_tensor, task_classes=[2, 3])(list(blob_images(1, 1)))


class RecordLearningRate(TrainerCallback):
    def __init__(self):
        self.rates = []

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.rates.append(optimizer.param_groups[0]["lr"])


def test_step_schedule_decays_at_the_given_epochs(tmp_path):
    # 8 samples / batch 2 = 4 steps per epoch; 5 epochs, decay ×0.1 at epochs 2 and 4 → steps 8 and 16.
    recorder = RecordLearningRate()
    trainer = make_trainer(tmp_path, callbacks=[recorder], num_train_epochs=5, lr_decay_epochs=[2, 4],
                           lr_decay_factor=0.1, warmup_steps=3)  # the step schedule has no warm-up
    trainer.train()
    expected = [0.05 * 0.1 ** sum(step >= m for m in (8, 16)) for step in range(20)]
    assert recorder.rates == pytest.approx(expected)


def test_step_schedule_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="set `num_train_epochs` instead of `max_steps`"):
        NSPTrainingArguments(output_dir=str(tmp_path), max_steps=10, lr_decay_epochs=[1])
    with pytest.raises(ValueError, match="strictly between 0 and `num_train_epochs`"):
        NSPTrainingArguments(output_dir=str(tmp_path), num_train_epochs=3, lr_decay_epochs=[3])
    with pytest.raises(ValueError, match=r"`lr_decay_factor` must be in \(0, 1\]"):
        NSPTrainingArguments(output_dir=str(tmp_path), lr_decay_factor=0)
