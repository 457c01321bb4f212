# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""A damaged or non-finite adapter is refused by `PeftModel.from_pretrained`, naming the file and the tensor."""

from __future__ import annotations

import json

import pytest
from peft import PeftConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from testing_utils import blob_images, tiny_model, to_tensor

import peft_nsp
from peft_nsp.tuner import NonFiniteError


@pytest.fixture
def stage(tmp_path):
    model = get_peft_model(tiny_model(), peft_nsp.VPTNSPConfig(prompt_length=2, classifier="linear"))
    model.add_task(["a", "b"])
    model.update_null_space([to_tensor(blob_images(2, 3)["image"])])
    model.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("key_part", ["vpt_nsp_prompt", "vpt_nsp_head", "key_projector", "prompt_covariance"])
def test_a_nan_anywhere_in_the_weights_is_named_with_the_file(stage, key_part):
    weights = stage / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = next(k for k in sorted(tensors) if key_part in k and tensors[k].is_floating_point())
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, weights)
    with pytest.raises(NonFiniteError, match=rf"{weights}.*non-finite.*{key_part}"):
        PeftModel.from_pretrained(tiny_model(), stage)


@pytest.mark.parametrize("keep", [4, 100, -7])
def test_a_truncated_weights_file_is_named(stage, keep):
    weights = stage / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:keep])
    with pytest.raises(ValueError, match=rf"adapter weights `{weights}` are damaged"):
        PeftModel.from_pretrained(tiny_model(), stage)


def test_a_sound_adapter_still_loads(stage):
    loaded = PeftModel.from_pretrained(tiny_model(), stage)
    assert loaded.peft_config["default"].class_names == ["a", "b"]
    assert "loaded_from" not in loaded.peft_config["default"].to_dict()


@pytest.mark.parametrize("keep", [0, 40, -3])
def test_a_half_written_adapter_config_is_named(stage, keep):
    """PEFT reads `adapter_config.json` before any code of ours: its error keeps its type (`JSONDecodeError`) and
    names the file, through `PeftModel.from_pretrained` and `PeftConfig.from_pretrained` alike."""
    config = stage / "adapter_config.json"
    config.write_text(config.read_text()[:keep])
    for load in (lambda: PeftModel.from_pretrained(tiny_model(), stage), lambda: PeftConfig.from_pretrained(stage)):
        with pytest.raises(json.JSONDecodeError, match=rf"`{config}` is not valid JSON.*damaged or half-written"):
            load()
