# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""CLIP-NSP²: prompts in CLIP's (and SigLIP's) image tower, the text-embedding classifier, classifier alignment.

Tiny random `CLIPConfig`s and a character-level `CLIPTokenizer` (no Hub). Expected values are computed
independently: statistics by brute force (numpy), logits through the base model's own `get_text_features` /
`get_image_features`, class statistics with `np.cov`.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model
from test_nullspace_math import BlockInputs, assert_close, brute_force_sums
from testing_utils import IMAGE_SIZE, blob_images, prompted_layers, randomize_layernorms, to_tensor
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from peft_nsp import VPTNSPConfig, VPTNSPLayer
from peft_nsp.continual.class_names import (
    benchmark_class_names,
    benchmark_text_templates,
    domainnet_paper_classes,
    readable_class_names,
)
from peft_nsp.loop import ClassIncrementalConfig, run_class_incremental
from peft_nsp.trainer import NSPConfig
from peft_nsp.tuner.classifier_alignment import ClassifierAlignmentArguments, align_classifier, sample_class_features


VOCAB = {"<|startoftext|>": 0, "<|endoftext|>": 1}
for _char in "abcdefghijklmnopqrstuvwxyz0123456789.":
    VOCAB[_char] = len(VOCAB)
    VOCAB[_char + "</w>"] = len(VOCAB)

VISION = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=64,
    image_size=IMAGE_SIZE,
    patch_size=4,
)
TEMPLATES = ["a photo of a {}.", "art of the {}."]


def tokenizer() -> CLIPTokenizer:
    """A character-level CLIP tokenizer (BOS 0, EOS/pad 1)."""
    return CLIPTokenizer(vocab=VOCAB, merges=[])


def clip_config(attn: str = "eager") -> CLIPConfig:
    text = dict(
        vocab_size=len(VOCAB),
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=48,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    config = CLIPConfig(text_config=text, vision_config=VISION, projection_dim=20)
    config._attn_implementation = attn
    return config


def tiny_clip(kind: str = "clip", seed: int = 0, attn: str = "eager", **vision_overrides) -> torch.nn.Module:
    """A seeded tiny random `CLIPModel` (``"clip"``), `CLIPVisionModel`, `SiglipVisionModel` or `SiglipModel`."""
    torch.manual_seed(seed)
    if kind == "clip":
        model = CLIPModel(clip_config(attn))
    elif kind == "clip-vision":
        config = CLIPVisionConfig(**VISION)
        config._attn_implementation = attn
        model = CLIPVisionModel(config)
    elif kind == "siglip-vision":
        config = SiglipVisionConfig(**{**VISION, **vision_overrides})
        config._attn_implementation = attn
        model = SiglipVisionModel(config)
    else:
        text = dict(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=48,
            projection_size=32,
        )
        config = SiglipConfig(text_config=text, vision_config=VISION)
        config._attn_implementation = attn
        model = SiglipModel(config)
    return model.eval()


def images(count: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(count, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def text_clip(seed: int = 0, attn: str = "eager", **config) -> PeftModel:
    """A `CLIPModel` with prompts in its first 3 image blocks and the text classifier."""
    config = {
        "prompt_length": 3,
        "prompt_layers": [0, 1, 2],
        "classifier": "text",
        "text_templates": TEMPLATES,
        **config,
    }
    return get_peft_model(tiny_clip("clip", seed, attn), VPTNSPConfig(**config))


def sharpen_attention(model: torch.nn.Module, seed: int = 0) -> None:
    """Random LayerNorm affines and larger q/k weights and biases: a non-uniform softmax with biases that matter."""
    randomize_layernorms(model, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, VPTNSPLayer):
                for proj in (layer.base_layer.self_attn.q_proj, layer.base_layer.self_attn.k_proj):
                    proj.weight.copy_(1.5 * torch.randn(proj.weight.shape, generator=generator) / math.sqrt(32))
                    proj.bias.copy_(0.5 * torch.randn(proj.bias.shape, generator=generator))


def perturb_trainable(model, scale: float = 0.1) -> None:
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(scale * torch.randn_like(param))


# ----------------------------------------------------------------------------------------------------------
# prompts in the image tower only
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "attn"), [("clip", "eager"), ("clip", "sdpa"), ("siglip-vision", "sdpa")])
def test_statistics_match_brute_force(kind, attn):
    """C1/C2 of the prompted image blocks against an explicit loop over samples, heads and image tokens."""
    config = VPTNSPConfig(prompt_length=3, prompt_layers=[0, 2], classifier="linear")
    model = get_peft_model(tiny_clip(kind, attn=attn), config)
    sharpen_attention(model)
    layers = prompted_layers(model)
    assert [layer.layer_index for layer in layers] == [0, 2]
    recorder = BlockInputs(layers)
    x = images()
    model.update_null_space([x[:2], x[2:]])
    recorder.remove()
    tokens = (IMAGE_SIZE // 4) ** 2 + (kind == "clip")  # CLIP has a CLS token, SigLIP none
    for index, layer in enumerate(layers):
        sums = [brute_force_sums(layer, block_input, num_heads=4) for block_input in recorder.inputs[index]]
        rows = sum(s[2] for s in sums)
        assert rows == 6 * 4 * tokens
        state = layer.vpt_nsp_null_space["default"]
        assert float(state.rows) == rows
        assert_close(state.key_covariance.numpy(), sum(s[0] for s in sums) / rows, 5e-7, "C1")
        assert_close(state.prompt_covariance.numpy(), sum(s[1] for s in sums) / rows, 2e-6, "C2")


def test_text_tower_is_never_prompted_nor_trained():
    model = text_clip()
    base = model.base_model.model
    assert [name for name, m in model.named_modules() if isinstance(m, VPTNSPLayer)] == [
        f"base_model.model.vision_model.encoder.layers.{i}" for i in range(3)
    ]
    model.add_task([4, 2], class_names=["cat", "dog"], tokenizer=tokenizer())
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    prompts = [f"base_model.model.vision_model.encoder.layers.{i}.vpt_nsp_prompt.default" for i in range(3)]
    assert trainable == [*prompts, "base_model.model.vpt_nsp_head.default.logit_scale"]
    frozen = {name: p.detach().clone() for name, p in base.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    output = model(pixel_values=images(), labels=torch.tensor([4, 2, 2, 4, 4, 2]))
    output.loss.backward()
    optimizer.step()
    for name, param in base.named_parameters():
        if "vpt_nsp" not in name:
            assert torch.equal(param, frozen[name]), name


@pytest.mark.parametrize("kind", ["clip", "clip-vision", "siglip-vision", "siglip"])
def test_disabled_adapter_and_unload_are_bit_identical_to_base(kind):
    x = images()
    reference_model = tiny_clip(kind, attn="sdpa")
    text = tokenizer()(["a cat", "a dog"], padding=True, return_tensors="pt") if kind == "clip" else None
    inputs = {"pixel_values": x}
    if kind in ("clip", "siglip"):  # an image–text call: the base model's own forward
        inputs["input_ids"] = text["input_ids"] if kind == "clip" else torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        reference = reference_model(**inputs)
    model = get_peft_model(tiny_clip(kind, attn="sdpa"), VPTNSPConfig(prompt_length=2, classifier="linear"))
    model.add_task(3)
    perturb_trainable(model)
    key = "logits_per_image" if "input_ids" in inputs else "pooler_output"
    with torch.no_grad():
        assert model(pixel_values=x).logits.shape == (6, 3)
        with model.disable_adapter():
            assert torch.equal(model(**inputs)[key], reference[key])
        prompted = model(**inputs)
        assert not torch.equal(prompted[key], reference[key])  # the image–text forward sees the prompts
    unloaded = model.unload()
    assert "forward" not in unloaded.__dict__
    with torch.no_grad():
        assert torch.equal(unloaded(**inputs)[key], reference[key])


def test_a_copied_model_routes_image_calls_to_its_own_tower():
    model = text_clip()
    model.add_task([0, 1], class_names=["cat", "dog"], tokenizer=tokenizer())
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for layer in prompted_layers(copied):
            layer.vpt_nsp_prompt["default"].zero_()
        copied_logits, logits = copied(pixel_values=images()).logits, model(pixel_values=images()).logits
        zeroed = [layer.vpt_nsp_prompt["default"].clone().zero_() for layer in prompted_layers(model)]
        for layer, prompt in zip(prompted_layers(model), zeroed):
            layer.vpt_nsp_prompt["default"].copy_(prompt)
        assert torch.equal(model(pixel_values=images()).logits, copied_logits)
    assert not torch.equal(logits, copied_logits)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_prompted_image_tower_matches_explicit_concatenation(attn):
    model = get_peft_model(tiny_clip("clip-vision", attn=attn), VPTNSPConfig(prompt_length=2, prompt_layers=[0, 1]))
    x = images()
    with torch.no_grad():
        got = model(pixel_values=x, output_hidden_states=True)
        vision = model.base_model.model
        hidden = vision.pre_layrnorm(vision.embeddings(x))
        for layer in vision.encoder.layers:
            if isinstance(layer, VPTNSPLayer):
                prompt = layer.vpt_nsp_prompt["default"].expand(x.shape[0], -1, -1)
                hidden = layer.base_layer(torch.cat([hidden, prompt], dim=1), None)[:, : hidden.shape[1]]
            else:
                hidden = layer(hidden, None)
    torch.testing.assert_close(got.last_hidden_state, hidden, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.pooler_output, vision.post_layernorm(hidden[:, 0]), rtol=1e-5, atol=1e-6)
    assert [h.shape[1] for h in got.hidden_states] == [hidden.shape[1]] * 4


# ----------------------------------------------------------------------------------------------------------
# the text-embedding classifier
# ----------------------------------------------------------------------------------------------------------
def direct_text_embeddings(clip: CLIPModel, names: list[str]) -> torch.Tensor:
    """Per class: the base model's text features of every template, normalised, averaged, normalised."""
    rows = []
    for name in names:
        per_template = []
        for template in TEMPLATES:
            ids = tokenizer()([template.format(name)], return_tensors="pt")["input_ids"]
            feature = clip.get_text_features(input_ids=ids).pooler_output[0]
            per_template.append(feature / feature.norm())
        mean = torch.stack(per_template).mean(0)
        rows.append(mean / mean.norm())
    return torch.stack(rows)


def test_text_classifier_logits_match_a_direct_computation():
    model = text_clip(logit_scale=1.7)
    model.add_task([4, 2], class_names=["cat", "dog"], tokenizer=tokenizer())
    model.add_task([0, 9, 7], class_names=["ship", "car", "frog"], tokenizer=tokenizer())
    perturb_trainable(model)
    clip = model.base_model.model
    x = images()
    with torch.no_grad():
        logits = model(pixel_values=x).logits
        # The base model's own image path (prompts active inside the wrapped blocks) and text path.
        image = clip.get_image_features(pixel_values=x).pooler_output
        text = direct_text_embeddings(clip, ["cat", "dog", "ship", "car", "frog"])
        scale = model.base_model.vpt_nsp_head["default"].logit_scale
    assert abs(float(scale.detach()) - 1.7) > 1e-3  # trained away from its initial value by perturb_trainable
    expected = scale.exp() * (image / image.norm(dim=-1, keepdim=True)) @ text.T
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert model.class_order() == [4, 2, 0, 9, 7]
    labels = torch.tensor([9, 4, 2, 7, 0, 2])
    with torch.no_grad():
        loss = model(pixel_values=x, labels=labels).loss
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(expected, torch.tensor([3, 0, 1, 4, 2, 1])))


def test_logit_scale_defaults_to_the_models_and_precomputed_embeddings_work():
    model = text_clip()
    assert model.base_model.vpt_nsp_head["default"].logit_scale.item() == pytest.approx(
        float(model.base_model.model.logit_scale)
    )
    siglip = get_peft_model(tiny_clip("siglip-vision"), VPTNSPConfig(classifier="text"))
    assert siglip.base_model.vpt_nsp_head["default"].logit_scale.item() == pytest.approx(math.log(100))
    embeddings = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    siglip.add_task(3, class_embeddings=embeddings)
    x = images()
    with torch.no_grad():
        pooled = siglip.base_model.model(pixel_values=x).pooler_output  # SigLIP's attention-pooling head
        expected = 100 * torch.nn.functional.normalize(pooled, dim=-1) @ torch.nn.functional.normalize(embeddings).T
        torch.testing.assert_close(siglip(pixel_values=x).logits, expected, rtol=1e-5, atol=1e-4)


def test_text_classifier_input_errors():
    model = text_clip()
    with pytest.raises(ValueError, match="needs the task's class names"):
        model.add_task(2)
    with pytest.raises(ValueError, match="needs the text tower's tokenizer"):
        model.add_task(2, class_names=["cat", "dog"])
    with pytest.raises(ValueError, match="Got 1 class names for 2 classes"):
        model.add_task(2, class_names=["cat"], tokenizer=tokenizer())
    with pytest.raises(ValueError, match=r"shape \(2, 20\).*got \(2, 32\)"):
        model.add_task(2, class_embeddings=torch.randn(2, 32))
    assert model.class_order() == []  # nothing was added by the failed calls
    vision = get_peft_model(tiny_clip("clip-vision"), VPTNSPConfig(classifier="text"))
    with pytest.raises(ValueError, match="`CLIPVisionModel` has no text tower.*`CLIPModel`.*width 32"):
        vision.add_task(2, class_names=["cat", "dog"], tokenizer=tokenizer())
    with pytest.warns(UserWarning, match="only apply to `classifier='text'`"):
        get_peft_model(tiny_clip("clip-vision"), VPTNSPConfig()).add_task(["cat", "dog"], tokenizer=tokenizer())
    with pytest.raises(ValueError, match="`text_templates` must be a non-empty list of strings with one"):
        VPTNSPConfig(classifier="text", text_templates=["no placeholder"])
    with pytest.raises(ValueError, match="`classifier` must be one of"):
        VPTNSPConfig(classifier="cosine")


def test_unsupported_clip_variants_are_clear_errors():
    with pytest.raises(ValueError, match="does not support `CLIPVisionModelWithProjection`.*CLIPModel"):
        get_peft_model(CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION)), VPTNSPConfig())
    with pytest.raises(ValueError, match="no attention-pooling head"):
        get_peft_model(tiny_clip("siglip-vision", vision_use_head=False), VPTNSPConfig())


# ----------------------------------------------------------------------------------------------------------
# class statistics and classifier alignment
# ----------------------------------------------------------------------------------------------------------
def test_class_statistics_match_numpy():
    model = text_clip(class_statistics=True)
    model.add_task([4, 2, 6], class_names=["cat", "dog", "cow"], tokenizer=tokenizer())
    perturb_trainable(model)
    x, labels = images(9), torch.tensor([4, 2, 4, 6, 2, 4, 6, 6, 2])
    model.update_class_statistics([{"pixel_values": x[:4], "labels": labels[:4]}, (x[4:], labels[4:])])
    with torch.no_grad():  # the pooled feature before the projection, from the base model's own image tower
        pooled = model.base_model.model.vision_model(pixel_values=x).pooler_output.double().numpy()
    means, covariances = model.class_feature_statistics()
    for column, label in enumerate([4, 2, 6]):
        rows = pooled[labels.numpy() == label]
        np.testing.assert_allclose(means[column].numpy(), rows.mean(0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(covariances[column].numpy(), np.cov(rows.T), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"Labels \[5\] are not classes of this task"):
        model.update_class_statistics([(x[:1], torch.tensor([5]))])
    with pytest.raises(ValueError, match=r"got no samples of classes \[6\]"):
        model.update_class_statistics([(x[:2], torch.tensor([4, 2]))])
    off = text_clip()
    off.add_task([0], class_names=["cat"], tokenizer=tokenizer())
    with pytest.raises(ValueError, match="create it with `class_statistics=True`"):
        off.update_class_statistics([(x[:1], torch.tensor([0]))])
    # Another batch layout through `forward_fn`/`labels_fn` (as PEFT's eva): the same statistics.
    stored = [t.clone() for t in model.class_feature_statistics()]
    model.update_class_statistics(
        [{"img": x[:5], "y": labels[:5]}, {"img": x[5:], "y": labels[5:]}],
        forward_fn=lambda backbone, batch: backbone(pixel_values=batch["img"]),
        labels_fn=lambda batch: batch["y"],
    )
    for before, after in zip(stored, model.class_feature_statistics()):
        torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="needs labels: .* pass `labels_fn=`"):
        model.update_class_statistics([{"pixel_values": x}])


def test_sampled_features_follow_the_class_gaussians():
    generator = torch.Generator().manual_seed(0)
    means = torch.randn(2, 3, generator=generator)
    factors = torch.randn(2, 3, 3, generator=generator)
    covariances = factors @ factors.transpose(-1, -2) + 0.1 * torch.eye(3)
    features, classes = sample_class_features(means, torch.linalg.cholesky(covariances), 20000, generator)
    assert features.shape == (40000, 3) and classes.tolist() == [0] * 20000 + [1] * 20000
    for c in range(2):
        rows = features[classes == c].double().numpy()
        np.testing.assert_allclose(rows.mean(0), means[c].numpy(), atol=0.06)
        np.testing.assert_allclose(np.cov(rows.T), covariances[c].numpy(), atol=0.15 * covariances[c].abs().max())


def held_out_loss(means, covariances, text, scale, projection) -> float:
    """Cross-entropy on fixed features drawn (by torch.distributions) independently of `align_classifier`, logits by hand."""
    torch.manual_seed(123)
    features, labels = [], []
    for c in range(means.shape[0]):
        gaussian = torch.distributions.MultivariateNormal(means[c].float(), covariances[c] + 1e-4 * torch.eye(32))
        features.append(gaussian.sample((200,)))
        labels += [c] * 200
    embedded = torch.cat(features) @ projection.T
    logits = scale.exp() * torch.nn.functional.normalize(embedded, dim=-1) @ text.T
    return float(torch.nn.functional.cross_entropy(logits, torch.tensor(labels)))


def test_alignment_reduces_the_loss_and_trains_only_the_projection_copy():
    model = text_clip(class_statistics=True)
    model.add_task([0, 1], class_names=["cat", "dog"], tokenizer=tokenizer())
    x = images(12)
    model.update_class_statistics([(x, torch.tensor([0, 1] * 6))])
    model.add_task([2, 3], class_names=["ship", "car"], tokenizer=tokenizer())
    model.update_class_statistics([(x + 1.0, torch.tensor([2, 3] * 6))])
    head = model.base_model.vpt_nsp_head["default"]
    projection = model.base_model.vpt_nsp_projection["default"]
    base_projection = model.base_model.model.visual_projection.weight.detach().clone()
    assert torch.equal(projection.weight, base_projection)
    means, covariances = model.class_feature_statistics()
    before_state = {k: v.clone() for k, v in model.state_dict().items() if "projection" not in k}
    before = held_out_loss(
        means, covariances, head.class_embeddings, head.logit_scale.detach(), projection.weight.detach()
    )
    arguments = ClassifierAlignmentArguments(
        alignment_epochs=8, alignment_learning_rate=0.2, alignment_batch_size=1024
    )
    losses = align_classifier(model, arguments, seed=3)
    after = held_out_loss(
        means, covariances, head.class_embeddings, head.logit_scale.detach(), projection.weight.detach()
    )
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert after < 0.9 * before
    assert not torch.equal(projection.weight, base_projection)
    assert torch.equal(model.base_model.model.visual_projection.weight, base_projection)  # the base is untouched
    for key, value in model.state_dict().items():
        if "projection" not in key:
            assert torch.equal(value, before_state[key]), key
    assert not projection.weight.requires_grad and head.logit_scale.grad is None


def test_alignment_needs_statistics_and_something_to_align():
    siglip = get_peft_model(tiny_clip("siglip-vision"), VPTNSPConfig(classifier="text", class_statistics=True))
    siglip.add_task(2, class_embeddings=torch.randn(2, 32))
    with pytest.raises(ValueError, match="Nothing to align"):
        align_classifier(siglip)
    linear = get_peft_model(tiny_clip("siglip-vision"), VPTNSPConfig(class_statistics=True, classifier="linear"))
    linear.add_task(2)
    with pytest.raises(ValueError, match=r"No class statistics for task\(s\) \[0\]"):
        align_classifier(linear)
    linear.update_class_statistics([(images(4), torch.tensor([0, 1, 0, 1]))])
    assert (
        len(align_classifier(linear, ClassifierAlignmentArguments(alignment_epochs=2))) == 2
    )  # linear heads are aligned
    with pytest.raises(ValueError, match="`alignment_epochs` must be ≥ 1"):
        ClassifierAlignmentArguments(alignment_epochs=0)


# ----------------------------------------------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------------------------------------------
def test_save_and_from_pretrained_give_identical_logits_and_state(tmp_path):
    model = text_clip(class_statistics=True)
    model.add_task([4, 2], class_names=["cat", "dog"], tokenizer=tokenizer())
    x = images(8)
    model.update_null_space([x])
    model.update_class_statistics([(x, torch.tensor([4, 2] * 4))])
    align_classifier(model, ClassifierAlignmentArguments(alignment_epochs=2, alignment_learning_rate=0.1))
    model.add_task([0], class_names=["ship"], tokenizer=tokenizer())
    perturb_trainable(model)
    model.eval()
    with torch.no_grad():
        expected = model(pixel_values=x).logits
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["classifier"] == "text" and saved["task_classes"] == [[4, 2], [0]]
    assert saved["text_templates"] == TEMPLATES and saved["class_statistics"] is True
    loaded = PeftModel.from_pretrained(tiny_clip("clip"), tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=x).logits, expected)
    state = loaded.state_dict()
    for name, tensor in model.state_dict().items():
        if "vpt_nsp" in name:
            assert torch.equal(state[name], tensor), name
    assert loaded.class_order() == [4, 2, 0] and loaded.tasks_seen() == 1
    # The checkpoint holds the text embeddings, not the text tower.
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    assert "base_model.model.vpt_nsp_head.class_embeddings" in keys and not any("text_model" in k for k in keys)


def test_linear_heads_on_clip_vision_survive_save_and_load(tmp_path):
    model = get_peft_model(tiny_clip("clip-vision"), VPTNSPConfig(prompt_length=2, classifier="linear"))
    model.add_task(3)
    perturb_trainable(model)
    with torch.no_grad():
        expected = model(pixel_values=images()).logits
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_clip("clip-vision"), tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=images()).logits, expected)


# ----------------------------------------------------------------------------------------------------------
# class-name lists and the end-to-end loop
# ----------------------------------------------------------------------------------------------------------
def test_shipped_class_name_lists():
    cifar = benchmark_class_names("cifar100")
    assert len(cifar) == 100 == len(set(cifar)) and cifar[1] == "aquarium fish"
    imagenet_r = benchmark_class_names("imagenet_r")
    assert len(imagenet_r) == 200 == len(set(imagenet_r)) and imagenet_r[0] == "goldfish"
    domainnet = benchmark_class_names("domainnet")
    assert len(domainnet) == 345 == len(set(domainnet)) and domainnet[0] == "aircraft carrier"
    paper = domainnet_paper_classes()
    assert len(paper) == 200 == len(set(paper)) and set(paper) <= set(domainnet)
    for dataset in ("cifar100", "imagenet_r", "domainnet"):
        assert all(template.count("{}") == 1 for template in benchmark_text_templates(dataset))
    assert readable_class_names(["n01443537", "aquarium_fish", "The_Eiffel_Tower"]) == [
        "goldfish",
        "aquarium fish",
        "The Eiffel Tower",
    ]
    with pytest.raises(ValueError, match="No class-name list for `cifar10`"):
        benchmark_class_names("cifar10")


def test_two_task_clip_run_end_to_end(tmp_path):
    train, test = blob_images(4, 4), blob_images(4, 2, seed=1)
    args = NSPConfig(
        output_dir=str(tmp_path),
        num_train_epochs=1,
        per_device_train_batch_size=4,
        learning_rate=0.01,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=3,
        save_strategy="no",
        logging_steps=50,
        classifier_alignment=True,
        alignment_epochs=2,
        alignment_samples_per_class=16,
    )
    config = VPTNSPConfig(
        prompt_length=2, prompt_layers=[0, 1, 2], classifier="text", text_templates=TEMPLATES, eta1=0.98, eta2=0.98
    )
    result = run_class_incremental(
        tiny_clip("clip"),
        config,
        args,
        ClassIncrementalConfig(num_tasks=2),
        train,
        test,
        train_transform=to_tensor,
        tokenizer=tokenizer(),
    )
    assert result.metrics.num_tasks == 2
    stage = tmp_path / "tasks" / "task-1"
    sequence = json.loads((stage / "sequence.json").read_text())
    assert sequence["settings"]["classifier_alignment"] and sequence["settings"]["alignment_epochs"] == 2
    assert sequence["method"] == "CLIP-NSP²"
    loaded = PeftModel.from_pretrained(tiny_clip("clip"), stage)
    order = [c for task in result.tasks for c in task]
    assert loaded.class_names() == [f"class_{c}" for c in order]  # the ClassLabel names name the columns
    assert loaded.peft_config["default"].class_statistics  # turned on by classifier alignment
    assert loaded.tasks_seen() == 2
    # The class embeddings are the text tower's encoding of the readable ClassLabel names ("class_3" → "class 3").
    names = [f"class {c}" for c in order]
    with torch.no_grad():
        expected = direct_text_embeddings(loaded.base_model.model, names)
    torch.testing.assert_close(
        loaded.base_model.vpt_nsp_head["default"].class_embeddings, expected, rtol=1e-5, atol=1e-6
    )
    # The aligned projection of the last stage is the one in the returned model.
    torch.testing.assert_close(
        loaded.base_model.vpt_nsp_projection["default"].weight,
        result.model.base_model.vpt_nsp_projection["default"].weight,
    )
    assert not torch.equal(
        loaded.base_model.vpt_nsp_projection["default"].weight, loaded.base_model.model.visual_projection.weight
    )
