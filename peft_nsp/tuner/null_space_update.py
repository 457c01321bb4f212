# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Fold a finished task into the null-space state of every prompted layer (the data-driven step of VPT-NSP²).

Like PEFT's data-driven initialisations (``lora/eva.py``), this runs the model over data with hooks: it collects
the task's ``C1``/``C2`` sums (`StatisticsCollector`), combines them with the earlier tasks' statistics, rebuilds
both projectors, and commits all layers at once: a failure, or a non-finite value anywhere, leaves every layer as it
was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._torch_utils import eval_mode
from ..losses import layernorm_consistency_loss
from ..nullspace.collector import LayerSums, StatisticsCollector
from ..nullspace.projector import null_space_projector
from ..nullspace.update import NullSpaceProjection, ProjectionTarget
from .analytic_head import AnalyticClassifier, AnalyticTaskFit, gather_by_index, holdout_mask
from .architectures import attention_access
from .batches import ForwardFn, LabelsFn, labels_of
from .config import VPTNSPConfig
from .layer import VPTNSPLayer


class NonFiniteError(ValueError):
    """A NaN or Inf reached a value that would be saved (statistics, projectors, prompts, heads, the loss)."""


@dataclass
class NullSpaceLayerReport:
    """What one `update_null_space` call did to one layer."""

    layer_index: int
    key_null_dim: int
    """Dimension of projector 1's null space (out of D)."""
    prompt_null_dim: int
    """Dimension of projector 2's null space (out of M)."""
    rows: float
    """Image-token query rows (``B·H·N``) collected for this task."""


def raise_if_not_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise [`NonFiniteError`] naming every tensor of ``tensors`` that holds a NaN or Inf."""
    bad = [name for name, tensor in tensors.items() if not bool(torch.isfinite(tensor).all())]
    if bad:
        shown = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
        raise NonFiniteError(f"{what}: non-finite values (NaN/Inf) in {shown}. Nothing was changed.")


@torch.no_grad()
def fold_task(
    layers: Sequence[VPTNSPLayer],
    adapter_name: str,
    config: VPTNSPConfig,
    batches: Iterable[Any],
    forward: Callable[[Any], None],
    reduce_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    chunk_size: int = 16,
    prepare_also: Callable[[], Callable[[], None]] | None = None,
) -> list[NullSpaceLayerReport]:
    """Collect a finished task's statistics over ``batches`` and rebuild every layer's projectors.

    Args:
        layers: the prompted layers of the adapter, in forward order.
        adapter_name: the adapter whose prompts and state are used (it must be the active one).
        config: its configuration (``task_weighting``, thresholds, η).
        batches: the task's training data with evaluation transforms.
        forward: runs the model (in eval mode) on one batch.
        reduce_fn: sums a tensor over processes, so every rank builds identical projectors.
        chunk_size: images per chunk for the softmax attention rows.
        prepare_also: another update computed from the same pass (the analytic head's fit): called once the layers'
            updates are computed and checked, it returns the commit that runs with theirs (all or nothing).

    Returns:
        One [`NullSpaceLayerReport`] per layer.

    Raises:
        ValueError: no batch was collected. [`NonFiniteError`]: a statistic or projector is not finite (e.g. a NaN
            pixel); no layer was changed.
    """
    accesses = [attention_access(layer.base_layer) for layer in layers]
    device = layers[0].vpt_nsp_prompt[adapter_name].device
    with StatisticsCollector(accesses, [config.prompt_length] * len(layers), chunk_size) as collector:
        for batch in batches:
            forward(batch)
    collected = collector.sums
    if reduce_fn is not None:
        # A process with an empty shard contributes zeros but must join every reduction.
        collected = [
            (sums or LayerSums.zeros(access, config.prompt_length, device)).reduce(reduce_fn)
            for sums, access in zip(collected, accesses)
        ]
    if any(sums is None or float(sums.rows) == 0 for sums in collected):
        raise ValueError("`update_null_space` got no batches: pass the finished task's training data.")
    # Everything is computed and checked before any layer changes.
    updates = []
    for layer, access, sums in zip(layers, accesses, collected):
        state = layer.vpt_nsp_null_space[adapter_name]
        rows = float(sums.rows)
        key_covariance, prompt_covariance = state.accumulated(
            sums.key_covariance(access.k_proj.weight), sums.prompt_gram, rows, config.task_weighting
        )
        name = f"layer {layer.layer_index}"
        raise_if_not_finite({f"{name} C1": key_covariance, f"{name} C2": prompt_covariance}, "`update_null_space`")
        # Eigendecompositions on the CPU in float64: identical on every rank, whatever the accelerator.
        key = null_space_projector(
            key_covariance.cpu(), config.eta1, config.threshold_mode, config.threshold_offset1, config.times_factor1
        )
        prompt = null_space_projector(
            prompt_covariance.cpu(), config.eta2, config.threshold_mode, config.threshold_offset2, config.times_factor2
        )
        raise_if_not_finite({f"{name} Proj1": key.matrix, f"{name} Proj2": prompt.matrix}, "`update_null_space`")
        updates.append((layer, state, key_covariance, prompt_covariance, rows, key, prompt))
    raise_if_not_finite(
        {f"layer {layer.layer_index} prompt": layer.vpt_nsp_prompt[adapter_name] for layer, *_ in updates},
        "`update_null_space`",
    )
    commit_also = prepare_also() if prepare_also is not None else None
    reports = []
    if commit_also is not None:
        commit_also()
    for layer, state, key_covariance, prompt_covariance, rows, key, prompt in updates:
        state.commit(key_covariance, prompt_covariance, rows, key, prompt, layer.vpt_nsp_prompt[adapter_name].detach())
        reports.append(NullSpaceLayerReport(layer.layer_index, key.null_dim, prompt.null_dim, rows))
    return reports


class NullSpaceMixin:
    """The null-space side of [`VPTNSPModel`]: the data pass that folds a finished task in (fitting the analytic
    head in the same pass), the projection of prompt updates and the LayerNorm consistency loss. Uses the model's
    adapters, prompted layers and heads."""

    @torch.no_grad()
    def update_null_space(
        self,
        batches: Iterable[Any],
        adapter_name: str | None = None,
        reduce_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        forward_kwargs: Mapping[str, Any] | None = None,
        chunk_size: int = 16,
        sample_indices: Sequence[int] | None = None,
        forward_fn: ForwardFn | None = None,
        labels_fn: LabelsFn | None = None,
    ) -> list[NullSpaceLayerReport]:
        """Collect the statistics of a finished task, fold them in and rebuild the projectors.

        Run after training each task, on that task's training data with evaluation transforms. The model is
        put in eval mode for the collection and restored afterwards. Also stores the current prompts as the
        reference of the LayerNorm consistency loss. All-or-nothing: an error or a non-finite value (e.g. a NaN
        pixel) leaves every layer as it was.

        Args:
            batches: iterable of batches (a `DataLoader` works); by default ``pixel_values`` tensors
                ``(B, C, H, W)``, tuples/lists whose first item is one, or mappings with a ``"pixel_values"`` key.
            adapter_name: defaults to the active adapter.
            reduce_fn: sums a tensor over processes (e.g. ``lambda t: accelerator.reduce(t, "sum")``), so
                every rank builds identical projectors from the statistics of all data.
            forward_kwargs: extra model arguments of the default ``forward_fn`` (e.g.
                ``{"interpolate_pos_encoding": True}``).
            chunk_size: images per chunk for the softmax attention rows.
            sample_indices: `classifier="analytic"` with several processes: the index of every sample of this
                process within the task's data, in the order the batches yield them (default ``0, 1, 2, …``). The
                same pass fits the analytic head (its batches then need ``labels``), on the features of every
                process gathered by these indices, so every rank computes the single-process solution.
            forward_fn: ``forward_fn(model, batch)`` runs the prompted model on one batch (default: its pixel values,
                see `peft_nsp.tuner.batches`), for any other batch layout.
            labels_fn: ``labels_fn(batch)`` gives a batch's ``(B,)`` class ids (`classifier="analytic"`; default: a
                ``labels`` key or the second item).

        Returns:
            One [`NullSpaceLayerReport`] per prompted layer.
        """
        adapter_name = self._statistics_adapter(adapter_name, "update_null_space")
        forward = self._batch_forward(forward_fn, forward_kwargs)
        head = self.vpt_nsp_head[adapter_name]
        prepare_head = None
        if isinstance(head, AnalyticClassifier):
            forward, prepare_head = self._analytic_pass(
                head, forward, labels_fn or labels_of, reduce_fn, sample_indices
            )
        with eval_mode(self.model):
            return fold_task(
                self.prompted_layers(adapter_name),
                adapter_name,
                self.peft_config[adapter_name],
                batches,
                forward,
                reduce_fn,
                chunk_size,
                prepare_head,
            )

    def _analytic_pass(
        self,
        head: AnalyticClassifier,
        forward: Callable[[Any], None],
        labels_fn: LabelsFn,
        reduce_fn: Callable[[torch.Tensor], torch.Tensor] | None,
        sample_indices: Sequence[int] | None,
    ) -> tuple[Callable[[Any], None], Callable[[], Callable[[], None]]]:
        """A forward that also records the pooled features and labels of the newest unfitted task, and the step
        that fits the analytic head on them (gathered over processes by index) once the pass is over."""
        task = head.fitted_tasks
        if task >= head.num_tasks:
            raise ValueError(
                f"The analytic head has fitted all {head.num_tasks} task(s): add the next task (`add_task`) before "
                "its statistics pass; a task's data cannot be added twice."
            )
        first = self.task_columns(task).start
        features, columns = [], []

        def forward_and_record(batch: Any) -> None:
            self._router.feature_sink = captured = []
            try:
                forward(batch)
            finally:
                self._router.feature_sink = None
            features.append(captured[-1].double())
            columns.append(self.class_ids_to_columns(labels_fn(batch).to(captured[-1].device)) - first)

        def prepare() -> Callable[[], None]:
            pooled, local = gather_by_index(features, columns, sample_indices, reduce_fn, head.in_features)
            fit: AnalyticTaskFit = head.prepare_task(pooled, local, holdout_mask(torch.arange(len(local))))
            return lambda: head.commit(fit)

        return forward_and_record, prepare

    def projection_targets(self, adapter_name: str | None = None) -> list[ProjectionTarget]:
        """The prompts whose updates are projected now, with their projectors."""
        adapter_name = adapter_name or self._active_adapter_name()
        projected = self.peft_config[adapter_name].projected_layers
        targets = []
        for layer in self.prompted_layers(adapter_name):
            state = layer.vpt_nsp_null_space[adapter_name]
            if state.has_projectors and (projected is None or layer.layer_index in projected):
                targets.append(
                    ProjectionTarget(layer.vpt_nsp_prompt[adapter_name], state.prompt_projector, state.key_projector)
                )
        return targets

    def attach_null_space_projection(
        self, optimizer: torch.optim.Optimizer, mode: str = "update", adapter_name: str | None = None
    ) -> NullSpaceProjection:
        """Make ``optimizer`` apply ``Proj2 · u · Proj1`` to every prompt update (see `NullSpaceProjection`).

        Returns the attached hooks; call ``.remove()`` to detach.
        """
        return NullSpaceProjection(lambda: self.projection_targets(adapter_name), mode).attach(optimizer)

    def layernorm_consistency_loss(self, adapter_name: str | None = None) -> torch.Tensor:
        """The LayerNorm consistency loss (unweighted; 0 before the first task was folded in)."""
        adapter_name = adapter_name or self._active_adapter_name()
        pairs = [
            (layer.vpt_nsp_prompt[adapter_name], layer.vpt_nsp_null_space[adapter_name].previous_prompt)
            for layer in self.prompted_layers(adapter_name)
            if layer.vpt_nsp_null_space[adapter_name].has_projectors
        ]
        if not pairs:
            return next(self.vpt_nsp_head.parameters(), torch.zeros(())).new_zeros(())
        return layernorm_consistency_loss([p for p, _ in pairs], [old for _, old in pairs])

    def tasks_seen(self, adapter_name: str | None = None) -> int:
        """Number of tasks folded into the null-space statistics."""
        adapter_name = adapter_name or self._active_adapter_name()
        return int(self.prompted_layers(adapter_name)[0].vpt_nsp_null_space[adapter_name].tasks_seen)
