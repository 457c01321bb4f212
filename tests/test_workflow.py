# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The continual workflow as users live it: one task at a time with named classes, and every Hugging Face entry
point (Trainer evaluation, `pipeline`, `AutoModel`, `load_adapter`, `PeftModel.from_pretrained` options)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from peft import PeftModel, inject_adapter_in_model, set_peft_model_state_dict
from safetensors.torch import load_file
from testing_utils import IMAGE_SIZE, blob_images, tiny_model, to_tensor
from transformers import (
    AutoModel,
    AutoModelForImageClassification,
    EarlyStoppingCallback,
    ViTForImageClassification,
    ViTImageProcessor,
    ViTModel,
    pipeline,
)

from peft_nsp import NSPConfig, NSPTrainer, VPTNSPConfig


BLOBS = blob_images(4, 6, seed=0)
TEST_BLOBS = blob_images(4, 3, seed=1)
NAMES = ["cat", "dog", "bird", "fish"]  # blob class c is NAMES[c]


def named(data: Dataset, classes: list[int], names: list[str]) -> Dataset:
    """The rows of blob ``classes`` under a `ClassLabel` of ``names`` (its own feature, like a new dataset)."""
    rows = [row for row in data if row["label"] in classes]
    features = Features({"image": Image(), "label": ClassLabel(names=names)})
    return Dataset.from_dict(
        {"image": [r["image"] for r in rows], "label": [names.index(NAMES[r["label"]]) for r in rows]},
        features=features,
    )


TASK_A = named(BLOBS, [0, 1], ["cat", "dog"])
TASK_B = named(BLOBS, [2, 3], ["bird", "fish"])
ALL_SEEN = named(TEST_BLOBS, [0, 1, 2, 3], ["fish", "cat", "bird", "dog"])  # another ClassLabel order


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny ViT backbone saved with its image processor (the user's base model)."""
    path = tmp_path_factory.mktemp("base")
    tiny_model("vit", seed=7).save_pretrained(path)
    ViTImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(path)
    return path


def config(output_dir, **kwargs) -> NSPConfig:
    defaults = dict(
        output_dir=str(output_dir),
        num_train_epochs=3,
        per_device_train_batch_size=4,
        learning_rate=0.05,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        seed=3,
        logging_steps=100,
    )
    return NSPConfig(**{**defaults, **kwargs})


def base(checkpoint, classification: bool = False):
    cls = ViTForImageClassification if classification else ViTModel
    return cls.from_pretrained(checkpoint, **({} if classification else {"add_pooling_layer": False}))


def processor(checkpoint):
    return ViTImageProcessor.from_pretrained(checkpoint)


def logits_of(model, dataset: Dataset) -> torch.Tensor:
    pixels = processor_pixels(dataset)
    with torch.no_grad():
        return model.eval()(pixel_values=pixels).logits


def processor_pixels(dataset: Dataset) -> torch.Tensor:
    return torch.stack([(to_tensor([row["image"]])[0]) for row in dataset])  # [-1, 1] = mean/std 0.5


@pytest.fixture(scope="module")
def first_task(checkpoint, tmp_path_factory):
    """Task A trained from the base model and saved as a user would: `train()` then `save_model()`."""
    folder = tmp_path_factory.mktemp("task-a")
    trainer = NSPTrainer(
        base(checkpoint),
        config(folder / "out"),
        train_dataset=TASK_A,
        processing_class=processor(checkpoint),
        peft_config=VPTNSPConfig(prompt_length=2, classifier="linear"),
    )
    trainer.train()
    trainer.save_model(str(folder))
    _point_at_base(folder, checkpoint)
    return folder


def _point_at_base(folder, checkpoint) -> None:
    """Stand-in for a Hub id: the adapter names the local base checkpoint."""
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "base_model_name_or_path": str(checkpoint)}))


@pytest.fixture(scope="module")
def second_task(first_task, checkpoint, tmp_path_factory):
    """Task B trained on the reloaded task-A adapter with new named classes, evaluated on all seen classes."""
    folder = tmp_path_factory.mktemp("task-b")
    model = PeftModel.from_pretrained(base(checkpoint), first_task, is_trainable=True)
    trainer = NSPTrainer(
        model,
        config(folder / "out"),
        train_dataset=TASK_B,
        eval_dataset=ALL_SEEN,
        processing_class=processor(checkpoint),
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    trainer.save_model(str(folder))
    _point_at_base(folder, checkpoint)
    return folder, trainer, before, after


def test_the_first_task_saves_names_processor_and_a_folded_null_space(first_task):
    adapter = json.loads((first_task / "adapter_config.json").read_text())
    assert adapter["class_names"] == ["cat", "dog"] and adapter["task_classes"] == [[0, 1]]
    assert (first_task / "preprocessor_config.json").is_file()
    model = PeftModel.from_pretrained(ViTModel(tiny_model("vit", seed=7).config, add_pooling_layer=False), first_task)
    assert model.tasks_seen() == 1  # folded at the end of train(): ready for the next task
    assert model.config.id2label == {0: "cat", 1: "dog"} and model.config.label2id == {"cat": 0, "dog": 1}


def test_evaluate_reports_class_incremental_accuracy_with_class_ids(second_task, checkpoint):
    folder, trainer, before, after = second_task
    assert trainer.args.label_names == ["labels"]
    assert {"eval_loss", "eval_accuracy", "eval_accuracy_task_0", "eval_accuracy_task_1"} <= set(after)
    assert "eval_accuracy_task_1" in before  # the new head exists from the start: evaluation before training works
    # Independently: the argmax column's name against each row's own ClassLabel name.
    model = PeftModel.from_pretrained(base(checkpoint), folder)
    logits = logits_of(model, ALL_SEEN)
    names = ALL_SEEN.features["label"].names
    truth = [names[row["label"]] for row in ALL_SEEN]
    predicted = [model.config.id2label[int(i)] for i in logits.argmax(-1)]
    assert after["eval_accuracy"] == pytest.approx(np.mean([p == t for p, t in zip(predicted, truth)]))
    task_a = [i for i, t in enumerate(truth) if t in ("cat", "dog")]
    assert after["eval_accuracy_task_0"] == pytest.approx(np.mean([predicted[i] == truth[i] for i in task_a]))
    expected_loss = torch.nn.functional.cross_entropy(logits, torch.tensor([model.config.label2id[t] for t in truth]))
    assert after["eval_loss"] == pytest.approx(float(expected_loss), rel=1e-4)


def test_predict_returns_logits_over_all_seen_classes_and_class_ids(second_task):
    _, trainer, _, _ = second_task
    output = trainer.predict(ALL_SEEN)
    assert output.predictions.shape == (len(ALL_SEEN), 4)  # logits, not a backbone's hidden states
    id2label = trainer.model.config.id2label
    names = ALL_SEEN.features["label"].names
    assert [id2label[i] for i in output.label_ids] == [names[row["label"]] for row in ALL_SEEN]


@pytest.mark.parametrize("classification", [False, True], ids=["ViTModel", "ViTForImageClassification"])
def test_pipeline_names_the_classes_for_a_peft_model_and_for_the_adapter_folder(
    second_task, checkpoint, classification
):
    folder, _, _, _ = second_task
    model = PeftModel.from_pretrained(base(checkpoint, classification), folder).eval()
    images = [row["image"] for row in ALL_SEEN]
    expected = torch.softmax(logits_of(model, ALL_SEEN), -1)
    for classify in (
        pipeline("image-classification", model=model, image_processor=processor(checkpoint)),
        pipeline("image-classification", model=str(folder)),
    ):
        answers = classify(images, top_k=4)
        for answer, probabilities in zip(answers, expected):
            assert sorted(a["label"] for a in answer) == sorted(NAMES)
            got = {a["label"]: a["score"] for a in answer}
            want = {model.config.id2label[i]: float(p) for i, p in enumerate(probabilities)}
            assert got == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("loader", [AutoModel, AutoModelForImageClassification])
def test_transformers_loaders_fill_the_heads(second_task, checkpoint, loader):
    """`AutoModel*.from_pretrained(<adapter>)` (and so `load_adapter`) loads prompts, heads and names, every time."""
    folder, _, _, _ = second_task
    reference = logits_of(PeftModel.from_pretrained(base(checkpoint), folder), ALL_SEEN)
    for _ in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = loader.from_pretrained(folder)
        torch.testing.assert_close(logits_of(loaded, ALL_SEEN), reference, rtol=1e-5, atol=1e-5)
        assert loaded.config.id2label == dict(enumerate(["cat", "dog", "bird", "fish"]))
    plain = base(checkpoint)
    plain.load_adapter(str(folder))
    torch.testing.assert_close(logits_of(plain, ALL_SEEN), reference, rtol=1e-5, atol=1e-5)


def test_inject_adapter_in_model_builds_every_tensor_the_adapter_holds(second_task, checkpoint):
    """PEFT's low-level `inject_adapter_in_model` (what transformers' `load_adapter` calls) builds prompts, heads and
    null-space state in place, so the saved tensors load completely and predict as `PeftModel.from_pretrained`."""
    folder, _, _, _ = second_task
    reference = logits_of(PeftModel.from_pretrained(base(checkpoint), folder), ALL_SEEN)
    model = inject_adapter_in_model(VPTNSPConfig.from_pretrained(folder), base(checkpoint))
    result = set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))
    assert not result.unexpected_keys
    assert not [key for key in result.missing_keys if "vpt_nsp" in key]
    torch.testing.assert_close(logits_of(model, ALL_SEEN), reference, rtol=1e-5, atol=1e-5)


def test_an_adapter_moves_between_vitmodel_and_vit_for_image_classification(second_task, checkpoint, tmp_path):
    folder, _, _, _ = second_task
    reference = logits_of(PeftModel.from_pretrained(base(checkpoint), folder), ALL_SEEN)
    onto_classifier = PeftModel.from_pretrained(base(checkpoint, classification=True), folder)
    torch.testing.assert_close(logits_of(onto_classifier, ALL_SEEN), reference, rtol=1e-5, atol=1e-5)
    onto_classifier.save_pretrained(tmp_path)
    back = PeftModel.from_pretrained(base(checkpoint), tmp_path)
    torch.testing.assert_close(logits_of(back, ALL_SEEN), reference, rtol=1e-5, atol=1e-5)


def test_low_cpu_mem_usage_and_revision_on_a_local_folder(second_task, checkpoint):
    folder, _, _, _ = second_task
    reference = logits_of(PeftModel.from_pretrained(base(checkpoint), folder), ALL_SEEN)
    quick = PeftModel.from_pretrained(base(checkpoint), folder, low_cpu_mem_usage=True)
    torch.testing.assert_close(logits_of(quick, ALL_SEEN), reference, rtol=0, atol=0)
    with pytest.raises(ValueError, match="`revision='task-3'` selects a revision of a Hub repository.*local folder"):
        PeftModel.from_pretrained(base(checkpoint), folder, revision="task-3")


def test_a_continued_adapter_protects_old_outputs_only_with_the_projection(first_task, checkpoint, tmp_path):
    """Across a reload: task B with the projection barely moves task A's outputs; without it they move."""
    task_a = processor_pixels(TASK_A)
    changes = {}
    for projection in (True, False):
        model = PeftModel.from_pretrained(base(checkpoint), first_task, is_trainable=True)
        with torch.no_grad():
            before = model.eval()(pixel_values=task_a).logits[:, :2].clone()
        args = config(tmp_path / str(projection), projection=projection)
        NSPTrainer(model, args, train_dataset=TASK_B, processing_class=processor(checkpoint)).train()
        with torch.no_grad():
            after = model.eval()(pixel_values=task_a).logits[:, :2]
        changes[projection] = float((after - before).abs().mean())
    assert changes[True] < 0.2 * changes[False], changes


def test_early_stopping_with_the_best_model_at_end(first_task, checkpoint, tmp_path):
    model = PeftModel.from_pretrained(base(checkpoint), first_task, is_trainable=True)
    args = config(
        tmp_path,
        num_train_epochs=4,
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        save_total_limit=2,
    )
    trainer = NSPTrainer(
        model,
        args,
        train_dataset=TASK_B,
        eval_dataset=ALL_SEEN,
        processing_class=processor(checkpoint),
        callbacks=[EarlyStoppingCallback(early_stopping_patience=1)],
    )
    trainer.train()
    best = max(entry["eval_accuracy"] for entry in trainer.state.log_history if "eval_accuracy" in entry)
    assert trainer.evaluate()["eval_accuracy"] == pytest.approx(best)
    assert trainer.state.best_model_checkpoint is not None


def test_a_model_cast_to_bf16_warns_when_training_starts(first_task, checkpoint, tmp_path):
    model = PeftModel.from_pretrained(base(checkpoint), first_task, is_trainable=True).to(torch.bfloat16)
    trainer = NSPTrainer(model, config(tmp_path), train_dataset=TASK_B, processing_class=processor(checkpoint))
    with pytest.warns(UserWarning, match=r"prompts are \['torch.bfloat16'\], not float32.*breaks the null-space"):
        trainer.create_optimizer()
