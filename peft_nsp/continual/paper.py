# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The paper's published results (Lu et al., NeurIPS 2024, Table 1; final accuracy / forgetting in %, mean of
3 seeds), keyed by benchmark name, so recipes and model cards can print ours next to them."""

from __future__ import annotations

from dataclasses import dataclass


PAPER_URL = "https://huggingface.co/papers/2406.05658"
PAPER_TITLE = "Visual Prompt Tuning in Null Space for Continual Learning"


@dataclass(frozen=True)
class PaperResult:
    """One method's published numbers on one benchmark (``forgetting`` is ``None`` for joint training)."""

    final_accuracy: float
    forgetting: float | None


#: benchmark → method → result. Methods: ``"VPT-Seq"``, ``"VPT-NSP²"``, ``"Upper bound (joint)"``, ``"CLIP-NSP²"``.
PAPER_RESULTS: dict[str, dict[str, PaperResult]] = {
    "cifar100-10": {
        "VPT-Seq": PaperResult(87.27, 12.33),
        "VPT-NSP²": PaperResult(91.74, 3.28),
        "Upper bound (joint)": PaperResult(93.87, None),
        "CLIP-NSP²": PaperResult(80.96, 12.45),
    },
    "cifar100-20": {
        "VPT-Seq": PaperResult(82.36, 17.36),
        "VPT-NSP²": PaperResult(89.89, 4.91),
        "Upper bound (joint)": PaperResult(93.87, None),
        "CLIP-NSP²": PaperResult(79.83, 13.77),
    },
    "imagenet-r-10": {
        "VPT-Seq": PaperResult(72.46, 19.41),
        "VPT-NSP²": PaperResult(78.88, 5.06),
        "Upper bound (joint)": PaperResult(84.60, None),
        "CLIP-NSP²": PaperResult(82.17, 6.42),
    },
    "domainnet-10": {
        "VPT-Seq": PaperResult(73.28, 25.65),
        "VPT-NSP²": PaperResult(83.54, 8.54),
        "Upper bound (joint)": PaperResult(89.25, None),
        "CLIP-NSP²": PaperResult(77.04, 18.33),
    },
}


def paper_results(benchmark: str | None) -> dict[str, PaperResult]:
    """The published rows for ``benchmark`` (empty for a benchmark the paper did not run)."""
    return dict(PAPER_RESULTS.get(benchmark or "", {}))


def comparison_rows(
    final_accuracy: float, forgetting: float | None, benchmark: str | None, method: str
) -> list[tuple[str, str, str]]:
    """``(row name, final accuracy %, forgetting %)`` rows: this run's, then the paper's for ``benchmark``.

    ``final_accuracy`` and ``forgetting`` are fractions in [0, 1] (``forgetting`` ``None`` for a one-task run).
    """

    def percent(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}"

    ours = (percent(100 * final_accuracy), percent(None if forgetting is None else 100 * forgetting))
    rows = [(f"{method} (this run)", *ours)]
    for name, result in paper_results(benchmark).items():
        rows.append((f"{name} (paper)", percent(result.final_accuracy), percent(result.forgetting)))
    return rows


def comparison_table(final_accuracy: float, forgetting: float | None, benchmark: str | None, method: str) -> str:
    """[`comparison_rows`] as a Markdown table."""
    lines = ["| | final accuracy (%) | forgetting (%) |", "|---|---|---|"]
    for name, accuracy, forgotten in comparison_rows(final_accuracy, forgetting, benchmark, method):
        lines.append(f"| {name} | {accuracy} | {forgotten} |")
    return "\n".join(lines)
