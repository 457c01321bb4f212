# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""NSPTrainer: projection per optimizer step, fp16 skips, gradient accumulation, optimizers, the loss."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate.optimizer import AcceleratedOptimizer
from peft import PeftModel, get_peft_model
from testing_utils import blob_images, prompted_layers, prompts, tiny_model, to_tensor
from transformers import TrainerCallback

from peft_nsp import VPTNSPConfig
from peft_nsp.continual.data import ImageCollator
from peft_nsp.trainer import NSPConfig, NSPTrainer


def second_task_model(temperature: float = 1.0):
    """A model whose first task (classes `class_0`, `class_1`) is folded in."""
    model = get_peft_model(
        tiny_model("vit", seed=4), VPTNSPConfig(prompt_length=2, temperature=temperature, classifier="linear")
    )
    model.add_task(["class_0", "class_1"])
    model.update_null_space([to_tensor(blob_images(2, 4)["image"])])
    return model


def task_two_data(per_class: int = 4):
    data = blob_images(4, per_class, seed=2)
    return data.select([i for i, label in enumerate(data["label"]) if label >= 2])


def config(tmp_path, **kwargs) -> NSPConfig:
    defaults = dict(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        learning_rate=0.05,
        per_device_train_batch_size=2,
        logging_steps=1,
    )
    return NSPConfig(**{**defaults, **kwargs})


def make_trainer(
    tmp_path, model=None, callbacks=(), optimizers=(None, None), optimizer_cls_and_kwargs=None, **kwargs
) -> NSPTrainer:
    """An NSPTrainer for task 2 (classes `class_2`, `class_3`) of `second_task_model()`."""
    return NSPTrainer(
        model or second_task_model(),
        config(tmp_path, **kwargs),
        train_dataset=task_two_data(),
        train_transform=to_tensor,
        callbacks=list(callbacks),
        optimizers=optimizers,
        optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
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
    prompted_layers(model)[0].vpt_nsp_prompt["default"].grad[0, 0] = float("inf")
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
    return [p.detach().clone() for p in prompts(trainer.model)]


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    """GA=4 × batch 2 must give the update of one batch of 8 (the per-batch-mean loss is divided by GA)."""
    big = prompts_after(make_trainer(tmp_path / "a", optim="sgd", max_steps=1, per_device_train_batch_size=8))
    accumulated = prompts_after(
        make_trainer(
            tmp_path / "b", optim="sgd", max_steps=1, per_device_train_batch_size=2, gradient_accumulation_steps=4
        )
    )
    for a, b in zip(big, accumulated):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_sgd_gradient_and_update_modes_agree_in_the_trainer(tmp_path):
    """Plain SGD: projecting the gradient or the update is the same step (up to float32 rounding); an unprojected run
    is far from both. Without the LayerNorm term: its L1 kinks turn rounding differences into sign flips."""
    runs = [
        prompts_after(
            make_trainer(
                tmp_path / mode,
                optim="sgd",
                num_train_epochs=2,
                projection_mode=mode,
                ln_loss_weight=0.0,
                learning_rate=5.0,
            )
        )
        for mode in ("gradient", "update")
    ]
    free = prompts_after(
        make_trainer(
            tmp_path / "free", optim="sgd", num_train_epochs=2, projection=False, ln_loss_weight=0.0, learning_rate=5.0
        )
    )
    for a, b, c in zip(*runs, free):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert (a - c).abs().max() > 1e-4


def test_projection_off_is_plain_training_and_custom_optimizers_work(tmp_path):
    trainer = make_trainer(tmp_path, projection=False, num_train_epochs=1)
    trainer.train()
    assert trainer.projection is None
    trainer = make_trainer(tmp_path / "custom", num_train_epochs=1)
    trainer.optimizer = torch.optim.RMSprop([p for p in trainer.model.parameters() if p.requires_grad], lr=0.01)
    trainer.train()
    assert trainer.projection.steps_projected == trainer.state.global_step > 0


def test_an_optimizer_built_before_the_new_head_is_refused_and_optimizer_cls_trains_the_head(tmp_path):
    model = second_task_model()
    early = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)  # before the task's head
    trainer = make_trainer(tmp_path / "early", model=model, num_train_epochs=1, optimizers=(early, None))
    with pytest.raises(ValueError, match=r"does not hold 2 tensor\(s\).*optimizer_cls_and_kwargs"):
        trainer.train()
    model = second_task_model()
    trainer = make_trainer(
        tmp_path / "cls", model=model, num_train_epochs=1, optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.5})
    )
    head = trainer.model.base_model.task_heads().heads[1]
    before = head.weight.detach().clone()
    trainer.train()
    assert (head.weight - before).abs().max() > 1e-4  # the new task's head trained
    assert trainer.projection.steps_projected == trainer.state.global_step > 0


def test_loss_is_temperature_scaled_ce_on_the_newest_head_plus_ln_term(tmp_path):
    trainer = make_trainer(tmp_path, model=second_task_model(temperature=4.0), temperature=4.0, ln_loss_weight=0.5)
    model = trainer.model
    with torch.no_grad():  # move prompts so the LayerNorm term is non-zero
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.2)
    assert model.config.id2label == {0: "class_0", 1: "class_1", 2: "class_2", 3: "class_3"}  # the head was added
    batch = ImageCollator(to_tensor)(list(trainer.train_dataset))
    assert batch["labels"].tolist() == [2] * 4 + [3] * 4  # class ids, named by the dataset's ClassLabel
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        pooled = model(pixel_values=batch["pixel_values"]).last_hidden_state[:, 0]
        outputs = model.base_model.task_heads().heads[1](pooled)  # the newest head's own outputs
        ce = torch.nn.functional.cross_entropy(outputs / 4.0, batch["labels"] - 2)
        ln = 0.0
        for layer in prompted_layers(model):
            p, old = layer.vpt_nsp_prompt["default"], layer.vpt_nsp_null_space["default"].previous_prompt
            ln += (p.mean(-1) - old.mean(-1)).abs().mean() + (
                p.std(-1, correction=0) - old.std(-1, correction=0)
            ).abs().mean()
    torch.testing.assert_close(loss, ce + 0.5 * ln)


def test_the_adapter_records_the_temperature_and_its_logits_are_divided_by_it(tmp_path):
    trainer = NSPTrainer(
        tiny_model("vit"),
        config(tmp_path, temperature=30.0),
        train_dataset=task_two_data(),
        train_transform=to_tensor,
        peft_config=VPTNSPConfig(prompt_length=2, classifier="linear"),
    )
    model = trainer.model.eval()
    assert model.peft_config["default"].temperature == 30.0
    x = to_tensor(task_two_data()["image"])
    with torch.no_grad():
        output = model(pixel_values=x)
        outputs = model.base_model.task_heads().heads[0](output.last_hidden_state[:, 0])
    torch.testing.assert_close(output.logits, outputs / 30.0)  # softmax(logits): what training optimised
    trainer.save_model(str(tmp_path / "stage"))
    assert json.loads((tmp_path / "stage" / "adapter_config.json").read_text())["temperature"] == 30.0
    reloaded = PeftModel.from_pretrained(tiny_model("vit"), str(tmp_path / "stage"), is_trainable=True)
    with pytest.raises(ValueError, match="trained at temperature 30.*continue with `temperature=30`"):
        NSPTrainer(reloaded, config(tmp_path), train_dataset=blob_images(2, 2), train_transform=to_tensor)


def test_trainer_input_errors(tmp_path):
    with pytest.raises(ValueError, match="Pass `peft_config=peft_nsp.VPTNSPConfig"):
        NSPTrainer(tiny_model("vit"), config(tmp_path))
    with pytest.raises(ValueError, match="already a PeftModel: pass `peft_config` only with a base model"):
        NSPTrainer(second_task_model(), config(tmp_path), peft_config=VPTNSPConfig())
    with pytest.raises(ValueError, match="one class.*a one-class task trains nothing"):
        NSPTrainer(
            second_task_model(),
            config(tmp_path),
            train_transform=to_tensor,
            train_dataset=task_two_data().filter(lambda row: row["label"] == 2),
        )
    with pytest.raises(ValueError, match=r"already learned: \['class_0', 'class_1'\]"):
        NSPTrainer(second_task_model(), config(tmp_path), train_transform=to_tensor, train_dataset=blob_images(2, 2))
    with pytest.raises(ValueError, match="pass `processing_class="):
        NSPTrainer(second_task_model(), config(tmp_path), train_dataset=task_two_data())
    with pytest.raises(ValueError, match="`temperature` must be a finite number > 0"):
        NSPConfig(output_dir=str(tmp_path), temperature=0)
    with pytest.raises(ValueError, match="`temperature` must be a finite number > 0"):
        NSPConfig(output_dir=str(tmp_path), temperature=float("nan"))
    with pytest.raises(ValueError, match="`ln_loss_weight` must be a finite number"):
        NSPConfig(output_dir=str(tmp_path), ln_loss_weight=float("nan"))
    with pytest.raises(ValueError, match="`ln_loss_weight` must be a finite number"):
        NSPConfig(output_dir=str(tmp_path), ln_loss_weight=-1)
    # One owner, resolved once: λ = 1 with the projection, 0 without it (VPT-Seq), unless given.
    assert NSPConfig(output_dir=str(tmp_path)).ln_loss_weight == 1.0
    assert NSPConfig(output_dir=str(tmp_path), projection=False).ln_loss_weight == 0.0
    assert NSPConfig(output_dir=str(tmp_path), projection=False, ln_loss_weight=0.5).ln_loss_weight == 0.5
    with pytest.raises(ValueError, match="`projection_mode` must be one of"):
        NSPConfig(output_dir=str(tmp_path), projection_mode="both")
    with pytest.raises(ValueError, match="`weight_decay_mode='l2'` builds `torch.optim.Adam`"):
        NSPConfig(output_dir=str(tmp_path), weight_decay_mode="l2", optim="sgd")


def test_plain_training_arguments_are_converted_as_trl_does(tmp_path):
    from transformers import TrainingArguments

    trainer = NSPTrainer(
        second_task_model(),
        TrainingArguments(output_dir=str(tmp_path), report_to="none", learning_rate=0.123, use_cpu=True),
        train_dataset=task_two_data(),
        train_transform=to_tensor,
    )
    assert isinstance(trainer.args, NSPConfig) and trainer.args.learning_rate == 0.123
    assert trainer.args.label_names == ["labels"] and trainer.args.temperature == 1.0


class RecordLearningRate(TrainerCallback):
    def __init__(self):
        self.rates = []

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.rates.append(optimizer.param_groups[0]["lr"])


def test_step_schedule_decays_at_the_given_epochs(tmp_path):
    # 8 samples / batch 2 = 4 steps per epoch; 5 epochs, decay ×0.1 at epochs 2 and 4 → steps 8 and 16.
    recorder = RecordLearningRate()
    trainer = make_trainer(
        tmp_path, callbacks=[recorder], num_train_epochs=5, lr_decay_epochs=[2, 4], lr_decay_factor=0.1, warmup_steps=3
    )  # the step schedule has no warm-up
    trainer.train()
    expected = [0.05 * 0.1 ** sum(step >= m for m in (8, 16)) for step in range(20)]
    assert recorder.rates == pytest.approx(expected)


def test_step_schedule_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="set `num_train_epochs` instead of `max_steps`"):
        NSPConfig(output_dir=str(tmp_path), max_steps=10, lr_decay_epochs=[1])
    with pytest.raises(ValueError, match="strictly between 0 and `num_train_epochs`"):
        NSPConfig(output_dir=str(tmp_path), num_train_epochs=3, lr_decay_epochs=[3])
    with pytest.raises(ValueError, match=r"`lr_decay_factor` must be a finite number > 0"):
        NSPConfig(output_dir=str(tmp_path), lr_decay_factor=0)
    with pytest.raises(ValueError, match=r"`lr_decay_factor` must be in \(0, 1\]"):
        NSPConfig(output_dir=str(tmp_path), lr_decay_factor=2)


def test_eval_data_may_name_its_image_column_differently(tmp_path):
    trainer = make_trainer(tmp_path, num_train_epochs=1)
    trainer.train()
    renamed = task_two_data().rename_column("image", "img")
    metrics = trainer.evaluate(eval_dataset=renamed)
    assert 0 <= metrics["eval_accuracy"] <= 1
    assert trainer.predict(renamed).predictions.shape == (8, 4)


def test_a_peft_model_of_another_method_is_refused_with_the_fix(tmp_path):
    from peft import LoraConfig

    lora = get_peft_model(tiny_model("vit"), LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="PeftModel with a `vpt_nsp` adapter"):
        NSPTrainer(lora, config(tmp_path), train_dataset=task_two_data(), train_transform=to_tensor)


def test_no_pin_memory_warning_on_a_machine_without_cuda(tmp_path, recwarn):
    trainer = make_trainer(tmp_path, num_train_epochs=1, use_cpu=False)
    trainer.train()
    trainer.evaluate(eval_dataset=task_two_data())
    assert trainer.args.dataloader_pin_memory == torch.cuda.is_available()
    assert not [w for w in recwarn if "pin_memory" in str(w.message)]


def test_save_model_writes_our_model_card_not_a_blank_one(tmp_path):
    trainer = make_trainer(tmp_path / "run", num_train_epochs=1)
    trainer.train()
    trainer.save_model(str(tmp_path / "stage"))
    card = (tmp_path / "stage" / "README.md").read_text()
    assert "More Information Needed" not in card and "trained from scratch" not in card
    assert "library_name: peft" in card and "import peft_nsp" in card.split("```python")[0]
    for name in ("class_0", "class_1", "class_2", "class_3"):
        assert name in card  # the classes of both tasks
    assert "trainer.evaluate()" in card  # the card says how to measure what it does not record
    record = json.loads((tmp_path / "stage" / "sequence.json").read_text())
    assert record["tasks"] == [["class_0", "class_1"], ["class_2", "class_3"]] and record["finished_tasks"] == 2
    with pytest.raises(ValueError, match="No adapter in"):
        trainer.create_model_card(output_dir=str(tmp_path / "empty"))
