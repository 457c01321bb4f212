# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The `vpt_nsp` method inside PEFT: registration, wrapping, heads, save/load, errors."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import torch
from peft import PeftModel, get_peft_model
from testing_utils import IMAGE_SIZE, prompted_layers, tiny_config, tiny_model
from transformers import ViTModel

import peft_nsp
from peft_nsp import VPTNSPConfig, VPTNSPLayer


FAMILIES = ["vit", "deit", "dinov2"]


def trained_two_task_model(family: str, classification: bool, images: torch.Tensor, attn: str = "eager"):
    """A PEFT model after two tasks: both heads, updated prompts, one projector update."""
    base = tiny_model(family, classification, attn_implementation=attn)
    model = get_peft_model(base, VPTNSPConfig(prompt_length=3, classifier="linear"))
    model.add_task(2)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn_like(param))
    model.update_null_space([images])
    model.add_task([5, 7, 9])
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("classification", [False, True])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_disabled_adapter_and_unload_are_bit_identical_to_base(family, classification, attn, images):
    base = tiny_model(family, classification, attn_implementation=attn)
    with torch.no_grad():
        reference = base(images, output_hidden_states=True)
    model = trained_two_task_model(family, classification, images, attn)
    with torch.no_grad():
        prompted = model(pixel_values=images)
        with model.disable_adapter():
            disabled = model(pixel_values=images, output_hidden_states=True)
    key = "logits" if classification else "last_hidden_state"
    assert torch.equal(disabled[key], reference[key])
    for got, want in zip(disabled.hidden_states, reference.hidden_states):
        assert torch.equal(got, want)
    assert prompted.logits.shape == (images.shape[0], 5)
    unloaded = model.unload()
    with torch.no_grad():
        assert torch.equal(unloaded(images)[key], reference[key])
    assert not any(isinstance(m, VPTNSPLayer) for m in unloaded.modules())


@pytest.mark.parametrize("family", FAMILIES)
def test_prompts_are_appended_and_dropped(family, images):
    model = get_peft_model(tiny_model(family), VPTNSPConfig(prompt_length=3))
    seen = []
    block = model.base_model.model.get_submodule("encoder.layer.0" if family == "dinov2" else "layers.0").base_layer
    block.register_forward_hook(lambda m, args, out: seen.append((args[0].shape[1], out.shape[1])))
    model.add_task(2)
    with torch.no_grad():
        out = model(pixel_values=images, output_hidden_states=True)
        num_tokens = model.base_model.model.embeddings(images).shape[1]  # DeiT adds a distillation token
    # The wrapped block sees N + M tokens; the next block and all reported hidden states see N.
    assert seen == [(num_tokens + 3, num_tokens + 3)]
    assert out.last_hidden_state.shape[1] == num_tokens
    assert len(out.hidden_states) == 3
    assert all(h.shape[1] == num_tokens for h in out.hidden_states)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_prompted_forward_matches_explicit_concatenation(attn, images):
    """Each prompted block equals `block(concat(X, P))[:, :N]`, computed by hand layer by layer."""
    base = tiny_model("vit", attn_implementation=attn)
    model = get_peft_model(base, VPTNSPConfig(prompt_length=2))
    with torch.no_grad():
        got = model(pixel_values=images).last_hidden_state
        vit = model.base_model.model
        hidden = vit.embeddings(images)
        for layer in vit.layers:
            prompt = layer.vpt_nsp_prompt["default"].expand(images.shape[0], -1, -1)
            hidden = layer.base_layer(torch.cat([hidden, prompt], dim=1))[:, : hidden.shape[1]]
        want = vit.layernorm(hidden)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("classification", [False, True])
def test_save_and_from_pretrained_give_identical_logits_and_state(family, classification, images, tmp_path):
    model = trained_two_task_model(family, classification, images)
    with torch.no_grad():
        expected = model(pixel_values=images).logits
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model(family, classification, seed=0), tmp_path)
    with torch.no_grad():
        got = loaded(pixel_values=images).logits
    assert torch.equal(got, expected)
    assert loaded.class_order() == [0, 1, 5, 7, 9]
    assert loaded.tasks_seen() == 1
    for name, tensor in model.state_dict().items():
        if "vpt_nsp" in name:
            assert torch.equal(loaded.state_dict()[name], tensor), name
    # The projection resumes from the restored projectors.
    targets = loaded.projection_targets()
    assert len(targets) == 2 and all(t.key_projector.abs().sum() > 0 for t in targets)


def test_from_pretrained_subfolder_and_load_adapter(images, tmp_path):
    model = trained_two_task_model("vit", False, images)
    with torch.no_grad():
        expected = model(pixel_values=images).logits
    model.save_pretrained(tmp_path / "repo" / "task-2")
    loaded = PeftModel.from_pretrained(tiny_model("vit"), tmp_path / "repo", subfolder="task-2")
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=images).logits, expected)
    # A second adapter through load_adapter, then switching between them.
    other = get_peft_model(tiny_model("vit"), VPTNSPConfig(prompt_length=3, classifier="linear"))
    other.load_adapter(tmp_path / "repo" / "task-2", adapter_name="old")
    other.set_adapter("old")
    with torch.no_grad():
        assert torch.equal(other(pixel_values=images).logits, expected)


def test_trainable_parameters_are_prompts_and_newest_head_only(images, tmp_path):
    model = trained_two_task_model("vit", True, images)
    model.train()
    model.set_adapter("default")
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == [
        "base_model.model.vit.layers.0.vpt_nsp_prompt.default",
        "base_model.model.vit.layers.1.vpt_nsp_prompt.default",
        "base_model.model.vit.vpt_nsp_head.default.heads.1.bias",
        "base_model.model.vit.vpt_nsp_head.default.heads.1.weight",
    ]
    model.save_pretrained(tmp_path)
    resumed = PeftModel.from_pretrained(tiny_model("vit", True), tmp_path, is_trainable=True)
    trainable = sorted(n for n, p in resumed.named_parameters() if p.requires_grad)
    assert [n for n in trainable if "head" in n] == [
        "base_model.model.vit.vpt_nsp_head.default.heads.1.bias",
        "base_model.model.vit.vpt_nsp_head.default.heads.1.weight",
    ]


def test_labels_are_global_class_ids(images):
    model = trained_two_task_model("vit", True, images)
    labels = torch.tensor([9, 0, 5, 1, 7, 9])
    with torch.no_grad():
        out = model(pixel_values=images, labels=labels)
    columns = torch.tensor([4, 0, 2, 1, 3, 4])
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, columns))
    with pytest.raises(ValueError, match="belong to no task head"):
        model(pixel_values=images, labels=torch.tensor([0, 1, 2, 3, 4, 6]))


def test_interpolate_pos_encoding_and_layer_subset(images):
    model = get_peft_model(tiny_model("vit"), VPTNSPConfig(prompt_length=2, prompt_layers=[1], classifier="linear"))
    assert [type(m.base_layer).__name__ for m in prompted_layers(model)] == ["ViTLayer"]
    assert model.base_model.model.layers[0].__class__.__name__ == "ViTLayer"
    model.add_task(4)
    bigger = torch.randn(2, 3, 2 * IMAGE_SIZE, 2 * IMAGE_SIZE)
    with torch.no_grad():
        out = model(pixel_values=bigger, interpolate_pos_encoding=True)
    assert out.logits.shape == (2, 4)
    report = model.update_null_space([bigger], forward_kwargs={"interpolate_pos_encoding": True})
    assert [r.layer_index for r in report] == [1]
    assert report[0].rows == 2 * 4 * ((2 * IMAGE_SIZE // 4) ** 2 + 1)


def test_dinov2_with_layerscale_and_any_shape(images):
    base = tiny_model("dinov2", hidden_size=48, num_attention_heads=6, layerscale_value=0.3, patch_size=8)
    model = get_peft_model(base, VPTNSPConfig(prompt_length=5, classifier="linear"))
    model.add_task(3)
    report = model.update_null_space([images])
    assert report[0].rows == 6 * 6 * ((IMAGE_SIZE // 8) ** 2 + 1)
    assert 1 <= report[0].key_null_dim <= 48 and 1 <= report[0].prompt_null_dim <= 5


def test_unsupported_model_lists_supported_ones():
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64))
    with pytest.raises(ValueError, match="does not support `BertModel`.*ViTModel"):
        get_peft_model(bert, VPTNSPConfig())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt_length": 0}, "`prompt_length` must be an integer ≥ 1"),
        ({"prompt_layers": []}, "`prompt_layers` must be None"),
        ({"prompt_layers": [-1]}, "`prompt_layers` must be None"),
        ({"prompt_init": "normal"}, r"`prompt_init` must be one of \['uniform', 'zeros'\]"),
        ({"threshold_mode": "energy"}, "`threshold_mode` must be one of"),
        ({"threshold_offset1": 1.5}, "`threshold_offset1` must be a fraction"),
        ({"threshold_offset2": -0.1}, "`threshold_offset2` must be a fraction"),
        ({"times_factor1": 0.5}, "`times_factor1` must be a finite number ≥ 1"),
        ({"times_factor1": float("inf")}, "`times_factor1` must be a finite number ≥ 1"),
        ({"threshold_offset1": float("nan")}, "`threshold_offset1` must be a fraction"),
        ({"eta2": float("nan")}, r"`eta2` must be in \[0, 1\]"),
        ({"task_weighting": "mean"}, r"`task_weighting` must be one of \['size', 'equal'\]"),
        ({"head_init": "xavier"}, "`head_init` must be one of"),
        ({"task_classes": [[0, 1]], "class_names": ["a"]}, "`class_names` names 1 classes but `task_classes` holds 2"),
        ({"eta1": 1.2}, r"`eta1` must be in \[0, 1\]"),
        ({"eta2": -0.1}, r"`eta2` must be in \[0, 1\]"),
        ({"prompt_layers": [0], "projected_layers": [1]}, "`projected_layers` \\[1\\] are not in `prompt_layers`"),
        ({"task_classes": [[]]}, "`task_classes` must be a list of non-empty lists"),
        ({"task_type": "SEQ_CLS"}, "`task_type` must be None"),
    ],
)
def test_bad_config_values_are_rejected_with_the_allowed_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VPTNSPConfig(**kwargs)


def test_prompt_layers_out_of_range_and_target_modules():
    with pytest.raises(ValueError, match="out of range: the model has 2 blocks"):
        get_peft_model(tiny_model("vit"), VPTNSPConfig(prompt_layers=[2]))
    model = get_peft_model(tiny_model("vit"), VPTNSPConfig(target_modules=r".*layers\.1"))
    assert [m.layer_index for m in prompted_layers(model)] == [1]
    with pytest.raises(ValueError, match="matches none of the transformer blocks"):
        get_peft_model(tiny_model("vit"), VPTNSPConfig(target_modules=["q_proj"]))


def test_adapter_on_a_model_with_another_hidden_size_is_a_clear_error(images, tmp_path):
    trained_two_task_model("vit", False, images).save_pretrained(tmp_path)
    torch.manual_seed(0)
    wider = ViTModel(tiny_config("vit", hidden_size=48, num_attention_heads=4))
    with pytest.raises(
        ValueError, match="made on a `ViTModel` with 2 blocks.*hidden_size 32 \\(adapter\\) vs 48 \\(this model\\)"
    ):
        PeftModel.from_pretrained(wider, tmp_path)


def test_bad_tasks_are_rejected(images):
    model = get_peft_model(tiny_model("vit"), VPTNSPConfig())
    model.add_task([0, 1])
    with pytest.raises(ValueError, match=r"Classes \[1\] already belong"):
        model.add_task([1, 2])
    with pytest.raises(ValueError, match="at least one class"):
        model.add_task([])
    with pytest.raises(ValueError, match="distinct"):
        model.add_task([3, 3])
    assert model.add_task(2) == 1 and model.class_order() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="got no batches"):
        model.update_null_space([])
    with pytest.raises(ValueError, match="Cannot read pixel values"):
        model.update_null_space(["not a tensor"])


def test_merge_is_refused(images):
    model = get_peft_model(tiny_model("vit"), VPTNSPConfig())
    with pytest.raises(NotImplementedError, match="cannot be merged"):
        model.merge_and_unload()


def test_casting_the_model_leaves_the_null_space_state_exact(images):
    model = get_peft_model(tiny_model("vit"), VPTNSPConfig(classifier="linear"))
    model.add_task(2)
    model.update_null_space([5 * images])
    before = {k: v.clone() for k, v in model.state_dict().items() if "null_space" in k}
    model.to(torch.bfloat16)
    model.to(torch.float32)
    for key, value in model.state_dict().items():
        if "null_space" in key:
            assert value.dtype == before[key].dtype and torch.equal(value, before[key]), key


def test_statistics_only_for_the_active_adapter(images):
    model = get_peft_model(tiny_model("vit"), VPTNSPConfig(prompt_length=4))
    model.add_adapter("other", VPTNSPConfig(prompt_length=2))
    model.add_task(2)
    with pytest.raises(ValueError, match=r"active adapter's prompts \('default'\).*set_adapter\('other'\)"):
        model.update_null_space([images], adapter_name="other")


def test_hidden_states_hold_image_tokens_with_or_without_heads(images):
    model = get_peft_model(tiny_model("vit"), VPTNSPConfig(prompt_length=4))
    with torch.no_grad():
        hidden = model(pixel_values=images, output_hidden_states=True).hidden_states
    assert [h.shape[1] for h in hidden] == [17, 17, 17]


def test_import_twice_and_reload_do_not_fail():
    importlib.reload(importlib.import_module("peft_nsp._registration"))
    importlib.reload(peft_nsp)
    code = "import peft_nsp, peft_nsp; import importlib; importlib.reload(peft_nsp); print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "ok\n"


def test_from_pretrained_needs_the_import_documented(tmp_path, images):
    """Without `import peft_nsp`, PEFT cannot know the type: the subprocess shows the failure mode."""
    trained_two_task_model("vit", False, images).save_pretrained(tmp_path)
    code = (
        "import sys; sys.path.insert(0, 'tests');"
        "from peft import PeftModel; from transformers import ViTModel, ViTConfig;"
        f"PeftModel.from_pretrained(ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,"
        f" intermediate_size=64, image_size=16, patch_size=4)), {str(tmp_path)!r})"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0 and "VPT_NSP" in result.stderr


def test_failed_null_space_update_leaves_every_layer_unchanged(images, monkeypatch):
    from peft_nsp.tuner import null_space_update as tuner_model

    model = get_peft_model(tiny_model("vit"), VPTNSPConfig(prompt_length=3, classifier="linear"))
    model.add_task(2)
    before = {k: v.clone() for k, v in model.state_dict().items() if "null_space" in k}
    calls = []

    def failing_projector(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # layer 1's first projector
            raise RuntimeError("simulated eigendecomposition failure")
        return real_projector(*args, **kwargs)

    real_projector = tuner_model.null_space_projector
    monkeypatch.setattr(tuner_model, "null_space_projector", failing_projector)
    with pytest.raises(RuntimeError, match="simulated"):
        model.update_null_space([images])
    for key, value in model.state_dict().items():
        if "null_space" in key:
            assert torch.equal(value, before[key]), key
    assert model.tasks_seen() == 0 and model.projection_targets() == []
