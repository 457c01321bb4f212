# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""What VPT-NSP² costs: projected training steps, statistics collection, attention backend, growth with tasks.

All ratios are measured in one run on the same (randomly initialised) model and the same batch:

- **train step** (forward, loss, backward, Adam step on prompts and newest head) with the null-space projection
  hooks attached vs without (the same optimizer, hooks removed); repetitions interleaved, median times;
- **statistics**: time and peak memory per image of the library's collection (``update_null_space``'s q/k hooks:
  per-head query Gram + prompt-attention Gram) vs a plain eval forward, and vs the naive form that materialises
  every ``q·W_k,h`` row (``B·H·N × D``) and sums ``rᵀr`` (naive ``C1`` only: a lower bound of its cost);
  peak memory beyond the model and inputs: GPU ``max_memory_allocated``; on the CPU (no allocator statistics)
  the peak of the live tensors created during the pass, tracked with a dispatch mode;
- **attention**: eager vs SDPA training steps;
- **tasks**: training steps/s and the bytes of null-space state (statistics + projectors) and heads after
  5, 10, 20, 50 tasks;
- **classifier alignment**: the class-statistics pass against a plain eval forward, the bytes the adapter keeps
  per class, and the time of one alignment (`align_classifier`, the default 50 epochs × 256 samples per class) with
  10, 50 and 200 seen classes.

Model sizes: ``vit-s16`` (ViT-S/16: 384 hidden, 12 layers, 6 heads; CPU default at 112 px, batch 32) and
``vit-b16`` (ViT-B/16 at 224 px; on a GPU: ``--device cuda --model vit-b16 --batch-size 256 --dtype bf16``,
then ``--dtype fp16``). FLOPs of a training step are counted with ``torch.utils.flop_counter``; the fraction of
peak needs ``--peak-tflops`` (or a GPU name in ``PEAK_TFLOPS``). ``--smoke`` uses a tiny ViT and runs in seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
import weakref
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
from common import RESULTS_DIR, facts_line, markdown_table, read_results, run_facts, write_results
from peft import get_peft_model
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode
from transformers import ViTConfig, ViTModel

import peft_nsp
from peft_nsp.nullspace.collector import StatisticsCollector
from peft_nsp.tuner.architectures import attention_access
from peft_nsp.tuner.classifier_alignment import ClassifierAlignmentArguments, align_classifier


MODELS = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=4),
    "vit-s16": dict(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, patch_size=16
    ),
    "vit-b16": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, patch_size=16
    ),
}
#: Dense bf16/fp16 tensor-core peak (TFLOP/s) by GPU name fragment, from the vendors' data sheets.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------------- setup
def build_model(
    name: str, image_size: int, attn: str, device: str, tasks_before: int, batch: torch.Tensor, **adapter: Any
):
    """A seeded random ViT with prompts and the paper's linear heads, ``tasks_before`` tasks folded into the null
    space, and a current task."""
    torch.manual_seed(0)
    config = ViTConfig(image_size=image_size, **MODELS[name])
    config._attn_implementation = attn
    adapter_config = peft_nsp.VPTNSPConfig(classifier="linear", **adapter)
    model = get_peft_model(ViTModel(config, add_pooling_layer=False), adapter_config).to(device)
    for _ in range(tasks_before):
        model.add_task(2)
        model.update_null_space([batch[:4]])
    model.add_task(2)
    return model


def make_batch(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
    return images.to(args.device), torch.randint(0, 2, (args.batch_size,), generator=generator).to(args.device)


def train_step(model, optimizer, images: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype | None) -> None:
    context = torch.autocast(images.device.type, dtype=dtype) if dtype is not None else nullcontext()
    optimizer.zero_grad(set_to_none=True)
    with context:
        logits = model(pixel_values=images).logits[:, model.base_model.task_columns()]
    F.cross_entropy(logits.float(), labels).backward()
    optimizer.step()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def prompted_layers(model) -> list[peft_nsp.VPTNSPLayer]:
    return model.base_model.prompted_layers()


def trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


# ---------------------------------------------------------------------------------------------- measurements
def measure_projection_overhead(args, images, labels) -> dict[str, Any]:
    """Median step time with and without the projection hooks, interleaved, same model and optimizer."""
    model = build_model(args.model, args.image_size, "sdpa", args.device, 1, images)
    optimizer = torch.optim.Adam(trainable(model), lr=1e-3)
    dtype = DTYPES[args.dtype]
    without, with_projection = [], []
    for _ in range(args.repeats):
        without += timed(lambda: train_step(model, optimizer, images, labels, dtype), args.device, args.steps)
        projection = model.attach_null_space_projection(optimizer)
        with_projection += timed(lambda: train_step(model, optimizer, images, labels, dtype), args.device, args.steps)
        projection.remove()
    flops = count_flops(lambda: train_step(model, optimizer, images, labels, dtype))
    peak = gpu_peak_memory(lambda: train_step(model, optimizer, images, labels, dtype), args.device)
    without_s, with_s = statistics.median(without), statistics.median(with_projection)
    return {
        "without_s": without_s,
        "with_s": with_s,
        "overhead": with_s / without_s - 1,
        "images_per_s": args.batch_size / with_s,
        "flops_per_step": flops,
        "achieved_tflops": flops / with_s / 1e12,
        "peak_memory_bytes": peak,
    }


def count_flops(fn: Callable[[], Any]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def gpu_peak_memory(fn: Callable[[], Any], device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())


class NaiveKeyCovariance:
    """``C1 = Σ rᵀ r`` over the materialised rows ``r = q_{n,h} · W_k,h`` (``B·H·N × D``), as a forward hook."""

    def __init__(self, model, num_prompts: int) -> None:
        self.accesses = [attention_access(layer.base_layer) for layer in prompted_layers(model)]
        self.num_prompts = num_prompts
        self.covariances: list[torch.Tensor | None] = [None] * len(self.accesses)

    def __enter__(self) -> NaiveKeyCovariance:
        self.handles = [a.q_proj.register_forward_hook(self._hook(i)) for i, a in enumerate(self.accesses)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def _hook(self, index: int) -> Callable:
        access = self.accesses[index]

        @torch.no_grad()
        def hook(module, args, queries: torch.Tensor) -> None:
            batch, tokens, _ = queries.shape
            image = queries[:, : tokens - self.num_prompts].reshape(batch, -1, access.num_heads, access.head_dim)
            key_blocks = access.k_proj.weight.reshape(access.num_heads, access.head_dim, -1)  # (H, d, D)
            rows = torch.einsum("bnhd,hdD->bhnD", image.float(), key_blocks.float()).reshape(-1, key_blocks.shape[-1])
            covariance = (rows.T @ rows).double()
            current = self.covariances[index]
            self.covariances[index] = covariance if current is None else current + covariance

        return hook


def statistics_pass(kind: str, model, images: torch.Tensor, dtype: torch.dtype | None) -> None:
    """One forward of ``kind``: ``eval`` (plain), ``library`` (the collector) or ``naive`` (materialised rows)."""
    layers = prompted_layers(model)
    if kind == "library":
        context = StatisticsCollector([attention_access(layer.base_layer) for layer in layers], [4] * len(layers))
    elif kind == "naive":
        context = NaiveKeyCovariance(model, 4)
    else:
        context = nullcontext()
    autocast = torch.autocast(images.device.type, dtype=dtype) if dtype is not None else nullcontext()
    with torch.no_grad(), context, autocast:
        model(pixel_values=images)


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of the tensors created inside the context (activations and temporaries), on any device.

    Every operator output's storage is counted once while any tensor created here still uses it; storages
    that existed before (weights, inputs) are not counted. Used on the CPU, which has no allocator statistics.
    """

    def __init__(self, existing: Sequence[torch.Tensor]) -> None:
        super().__init__()
        self.external = {t.untyped_storage().data_ptr() for t in existing}
        self.users: dict[int, int] = {}
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(output)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in self.external:
                self._track(tensor)
        return output

    def _track(self, tensor: torch.Tensor) -> None:
        key, size = tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes()
        if key not in self.users:
            self.users[key] = 0
            self.live += size
            self.peak = max(self.peak, self.live)
        self.users[key] += 1
        weakref.finalize(tensor, self._release, key, size)

    def _release(self, key: int, size: int) -> None:
        self.users[key] -= 1
        if self.users[key] == 0:
            del self.users[key]
            self.live -= size


def peak_memory(args: argparse.Namespace, kind: str, model, images) -> int:
    """Peak bytes of one statistics pass beyond the model and inputs (GPU allocator, or tensor tracking)."""
    if args.device.startswith("cuda"):
        baseline = torch.cuda.memory_allocated()
        return (
            gpu_peak_memory(lambda: statistics_pass(kind, model, images, DTYPES[args.dtype]), args.device) - baseline
        )
    tracker = PeakTensorMemory([*model.parameters(), *model.buffers(), images])
    with tracker:
        statistics_pass(kind, model, images, DTYPES[args.dtype])
    return tracker.peak


def measure_statistics(args, images) -> dict[str, Any]:
    model = build_model(args.model, args.image_size, "sdpa", args.device, 1, images).eval()
    dtype = DTYPES[args.dtype]
    with NaiveKeyCovariance(model, 4) as naive, torch.no_grad():
        model(pixel_values=images)
    layer = prompted_layers(model)[0]
    with StatisticsCollector([attention_access(layer.base_layer)], [4]) as collector, torch.no_grad():
        model(pixel_values=images)
    library = collector.sums[0].key_covariance(layer.base_layer.attention.k_proj.weight)
    agreement = float((library - naive.covariances[0]).abs().max() / library.abs().max())
    result: dict[str, Any] = {"naive_vs_library_max_relative_difference": agreement}
    times = {kind: [] for kind in ("eval", "library", "naive")}
    for _ in range(args.repeats):
        for kind in times:
            times[kind] += timed(lambda: statistics_pass(kind, model, images, dtype), args.device, args.steps)
    for kind, values in times.items():
        result[kind] = {
            "seconds_per_image": statistics.median(values) / args.batch_size,
            "peak_memory_bytes_per_image": peak_memory(args, kind, model, images) / args.batch_size,
        }
    return result


def measure_attention(args, images, labels) -> dict[str, Any]:
    result = {}
    for attn in ("eager", "sdpa"):
        model = build_model(args.model, args.image_size, attn, args.device, 0, images)
        optimizer = torch.optim.Adam(trainable(model), lr=1e-3)
        values = timed(
            lambda: train_step(model, optimizer, images, labels, DTYPES[args.dtype]),
            args.device,
            args.steps * args.repeats,
        )
        step = statistics.median(values)
        result[attn] = {"step_s": step, "images_per_s": args.batch_size / step}
    return result


def state_bytes(model) -> dict[str, int]:
    """Bytes of the null-space state (statistics, projectors, previous prompts) and of the heads."""
    null_space = sum(
        t.numel() * t.element_size() for name, t in model.state_dict().items() if "vpt_nsp_null_space" in name
    )
    heads = sum(p.numel() * p.element_size() for p in model.base_model.vpt_nsp_head.parameters())
    return {"null_space_bytes": null_space, "head_bytes": heads}


def measure_task_scaling(args, images, labels) -> list[dict[str, Any]]:
    rows = []
    for tasks in args.tasks:
        model = build_model(args.model, args.image_size, "sdpa", args.device, tasks - 1, images)
        optimizer = torch.optim.Adam(trainable(model), lr=1e-3)
        model.attach_null_space_projection(optimizer)
        values = timed(
            lambda: train_step(model, optimizer, images, labels, DTYPES[args.dtype]),
            args.device,
            args.steps * args.repeats,
        )
        rows.append({"tasks": tasks, "steps_per_s": 1 / statistics.median(values), **state_bytes(model)})
    return rows


def measure_alignment(args, images) -> dict[str, Any]:
    """Classifier alignment's costs: the class-statistics pass, the adapter bytes per class, one alignment."""
    model = build_model(args.model, args.image_size, "sdpa", args.device, 0, images, class_statistics=True).eval()
    classes = model.class_names()
    labels = torch.arange(len(images), device=args.device) % len(classes)
    times = {kind: [] for kind in ("eval", "class statistics")}
    for _ in range(args.repeats):
        times["eval"] += timed(
            lambda: statistics_pass("eval", model, images, DTYPES[args.dtype]), args.device, args.steps
        )
        times["class statistics"] += timed(
            lambda: model.update_class_statistics([{"pixel_values": images, "labels": labels}]),
            args.device,
            args.steps,
        )
    per_class = sum(
        t.numel() * t.element_size() for name, t in model.state_dict().items() if "vpt_nsp_class_statistics" in name
    ) / len(classes)
    alignment_seconds = []
    for seen in (10, 50, 200):
        model = build_model(args.model, args.image_size, "sdpa", args.device, 0, images, class_statistics=True)
        model.add_task(seen - 2)  # 2 + (seen − 2) classes
        store = model.base_model.vpt_nsp_class_statistics["default"]
        generator = torch.Generator().manual_seed(0)
        for task, size in enumerate(model.base_model.task_heads().task_sizes):
            width = store.feature_size
            factors = torch.randn(size, width, width, generator=generator, dtype=torch.float64) / width
            store.store(
                task,
                torch.full((size,), 100.0, dtype=torch.float64),
                torch.randn(size, width, generator=generator, dtype=torch.float64),
                factors @ factors.transpose(-1, -2),
            )
        start = time.perf_counter()
        align_classifier(model, ClassifierAlignmentArguments(), seed=0)
        synchronize(args.device)
        alignment_seconds.append({"classes": seen, "seconds": time.perf_counter() - start})
    return {
        "seconds_per_image": {kind: statistics.median(values) / args.batch_size for kind, values in times.items()},
        "bytes_per_class": per_class,
        "seconds_per_alignment": alignment_seconds,
    }


# ---------------------------------------------------------------------------------------------- tables
def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.3f}"


def _per_image(stats: dict[str, Any], key: str, kind: str) -> float:
    return max(stats[kind][key], 1e-12)


def markdown(results: dict[str, Any]) -> str:
    """The cost section of RESULTS.md from the JSON results (one entry per configuration run)."""
    out = ["## Cost", ""]
    for run in results["runs"]:
        s, step, stats = run["settings"], run["train_step"], run["statistics"]
        peak_tflops = s.get("peak_tflops")
        fraction = f"{100 * step['achieved_tflops'] / peak_tflops:.1f} %" if peak_tflops else "n/a (no peak given)"
        time_of = partial(_per_image, stats, "seconds_per_image")
        memory_of = partial(_per_image, stats, "peak_memory_bytes_per_image")
        out += [
            f"### {s['model']}, {s['image_size']} px, batch {s['batch_size']}, {s['dtype']}, {s['device']}",
            "",
            facts_line(run["facts"]),
            "",
            markdown_table(
                ["training step", "seconds", "images/s", "peak memory (MiB)", "TFLOP/s", "of peak"],
                [
                    [
                        "without projection",
                        f"{step['without_s']:.4f}",
                        f"{s['batch_size'] / step['without_s']:.1f}",
                        "",
                        "",
                        "",
                    ],
                    [
                        "with projection",
                        f"{step['with_s']:.4f}",
                        f"{step['images_per_s']:.1f}",
                        _mib(step["peak_memory_bytes"]),
                        f"{step['achieved_tflops']:.3f}",
                        fraction,
                    ],
                    ["overhead", f"{100 * step['overhead']:+.2f} %", "", "", "", ""],
                ],
            ),
            "",
            f"FLOPs per training step (counted): {step['flops_per_step'] / 1e9:.2f} GFLOP.",
            "",
            markdown_table(
                ["statistics pass", "ms per image", "× eval", "peak memory per image (MiB)", "× eval"],
                [
                    [
                        kind,
                        f"{1e3 * time_of(kind):.3f}",
                        f"{time_of(kind) / time_of('eval'):.2f}",
                        _mib(memory_of(kind)),
                        f"{memory_of(kind) / memory_of('eval'):.2f}",
                    ]
                    for kind in ("eval", "library", "naive")
                ],
            ),
            "",
            f"library vs naive: {time_of('naive') / time_of('library'):.2f}× faster, "
            f"{memory_of('naive') / memory_of('library'):.2f}× less peak memory per image; their C1 agree to "
            f"{stats['naive_vs_library_max_relative_difference']:.1e} (max relative difference).",
            "",
            markdown_table(
                ["attention (training step)", "seconds", "images/s"],
                [
                    [attn, f"{run['attention'][attn]['step_s']:.4f}", f"{run['attention'][attn]['images_per_s']:.1f}"]
                    for attn in ("eager", "sdpa")
                ],
            ),
            "",
            markdown_table(
                ["tasks", "steps/s (projected)", "null-space state (MiB)", "heads (MiB)"],
                [
                    [row["tasks"], f"{row['steps_per_s']:.2f}", _mib(row["null_space_bytes"]), _mib(row["head_bytes"])]
                    for row in run["tasks"]
                ],
            ),
            "",
        ]
        if "alignment" in run:
            alignment = run["alignment"]
            passes = alignment["seconds_per_image"]
            out += [
                markdown_table(
                    ["classifier alignment", "value"],
                    [
                        ["class-statistics pass (ms per image)", f"{1e3 * passes['class statistics']:.3f}"],
                        ["× a plain eval forward", f"{passes['class statistics'] / passes['eval']:.2f}"],
                        ["adapter bytes per class (MiB)", _mib(alignment["bytes_per_class"])],
                        *[
                            [f"one alignment, {row['classes']} seen classes (s)", f"{row['seconds']:.2f}"]
                            for row in alignment["seconds_per_alignment"]
                        ],
                    ],
                ),
                "",
            ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit-s16", choices=sorted(MODELS))
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: steadier on a shared CPU)")
    parser.add_argument("--steps", type=int, default=3, help="timed calls per repetition")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--tasks", nargs="+", type=int, default=[5, 10, 20, 50])
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for the FLOP/s fraction")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "speed.json")
    parser.add_argument("--smoke", action="store_true", help="tiny ViT, a few steps, seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.image_size, args.batch_size, args.steps, args.repeats, args.tasks = (
            "tiny",
            16,
            4,
            1,
            1,
            [2, 3],
        )
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    facts = run_facts(args.device)
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in facts["machine"]), None)
    settings = {
        "model": args.model,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "device": args.device,
        "threads": args.threads,
        "peak_tflops": peak,
    }
    images, labels = make_batch(args)
    run = {
        "settings": settings,
        "facts": facts,
        "train_step": measure_projection_overhead(args, images, labels),
        "statistics": measure_statistics(args, images),
        "attention": measure_attention(args, images, labels),
        "tasks": measure_task_scaling(args, images, labels),
        "alignment": measure_alignment(args, images),
    }
    previous = read_results(args.output) or {"runs": []}
    identity = ("model", "image_size", "batch_size", "dtype", "device")
    runs = [r for r in previous["runs"] if [r["settings"][k] for k in identity] != [settings[k] for k in identity]]
    results = {"runs": [*runs, run]}
    write_results(args.output, results)
    print(markdown({"runs": [run]}))
    return results


if __name__ == "__main__":
    main()
