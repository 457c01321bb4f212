# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Independent numerical checks of the null-space maths (ALGORITHM.md) against brute-force references.

Every expected value here is computed from scratch in the test (numpy/scipy, float64, explicit loops over
samples, heads and tokens): nothing is taken from ``peft_nsp``'s own statistics or projector functions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from peft import get_peft_model
from scipy.ndimage import gaussian_filter1d
from testing_utils import NUM_IMAGE_TOKENS, prompted_layers, randomize_layernorms, tiny_model
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import peft_nsp
from peft_nsp.losses import layernorm_consistency_loss
from peft_nsp.nullspace.projector import (
    adaptive_split_index,
    gaussian_smooth,
    null_space_projector,
    times_split_index,
)


FAMILIES = ["vit", "deit", "dinov2"]
PROMPT_LENGTH = 4


# ----------------------------------------------------------------------------------------------------------
# helpers: a model with non-trivial attention, and the brute-force statistics
# ----------------------------------------------------------------------------------------------------------
def prompted_model(family: str, attn: str, seed: int = 0, task_weighting: str = "size", **overrides):
    """A PEFT-wrapped tiny model whose q/k projections and LayerNorms are far from their init.

    Fresh ViT weights (std 0.02, zero biases) give an almost uniform softmax and zero q/k biases; larger
    random weights and biases make the attention rows, the query bias and the LayerNorm affine matter.
    """
    base = tiny_model(family, seed=seed, attn_implementation=attn, **overrides)
    randomize_layernorms(base, seed=seed + 1)
    model = get_peft_model(
        base, peft_nsp.VPTNSPConfig(prompt_length=PROMPT_LENGTH, task_weighting=task_weighting, classifier="linear")
    )
    generator = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for layer in prompted_layers(model):
            attention = layer.base_layer.attention
            for proj in (attention.q_proj, attention.k_proj):
                fan_in = proj.weight.shape[1]
                proj.weight.copy_(1.5 * torch.randn(proj.weight.shape, generator=generator) / math.sqrt(fan_in))
                proj.bias.copy_(0.5 * torch.randn(proj.bias.shape, generator=generator))
    return model.eval()


def pre_attention_norm(block: torch.nn.Module) -> torch.nn.LayerNorm:
    for name in ("norm1", "layernorm_before", "layer_norm1"):  # DINOv2, ViT/DeiT, CLIP/SigLIP
        if hasattr(block, name):
            return getattr(block, name)
    raise AssertionError(f"no pre-attention LayerNorm on {type(block).__name__}")


def self_attention(block: torch.nn.Module) -> torch.nn.Module:
    return block.self_attn if hasattr(block, "self_attn") else block.attention


class BlockInputs:
    """Forward pre-hooks on the prompted blocks recording their (B, N, D) input of every call."""

    def __init__(self, layers):
        self.inputs = [[] for _ in layers]
        self.handles = [
            layer.register_forward_pre_hook(self._hook(i), with_kwargs=True) for i, layer in enumerate(layers)
        ]

    def _hook(self, index):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self.inputs[index].append(hidden.detach().double().numpy().copy())

        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()


def brute_force_sums(layer, block_input: np.ndarray, num_heads: int):
    """Explicit ``Σ rᵀ r`` (D × D), ``Σ aᵀ a`` (M × M) and row count for one block and one batch.

    ``r = q_{n,h} · W_k,h`` and ``a`` = prompt columns of ``softmax(q_{n,h} k_hᵀ / sqrt(d))`` over all N + M
    keys, built one (sample, head, image token) at a time in float64.
    """
    block = layer.base_layer
    prompt = layer.vpt_nsp_prompt["default"].detach().double().numpy()
    norm = pre_attention_norm(block)
    gamma, beta, eps = (norm.weight.detach().double().numpy(), norm.bias.detach().double().numpy(), norm.eps)
    attention = self_attention(block)
    wq = attention.q_proj.weight.detach().double().numpy()
    bq = attention.q_proj.bias.detach().double().numpy()
    wk = attention.k_proj.weight.detach().double().numpy()
    bk = attention.k_proj.bias.detach().double().numpy()

    batch, num_tokens, hidden = block_input.shape
    num_prompts = prompt.shape[0]
    head_dim = hidden // num_heads
    scale = 1.0 / math.sqrt(head_dim)

    key_sum = np.zeros((hidden, hidden))
    prompt_sum = np.zeros((num_prompts, num_prompts))
    rows = 0
    for b in range(batch):
        z = np.concatenate([block_input[b], prompt], axis=0)  # (N + M, D), prompts after the image tokens
        mu = z.mean(axis=1, keepdims=True)
        var = ((z - mu) ** 2).mean(axis=1, keepdims=True)
        z = (z - mu) / np.sqrt(var + eps) * gamma + beta
        q = z @ wq.T + bq
        k = z @ wk.T + bk
        for h in range(num_heads):
            cols = slice(h * head_dim, (h + 1) * head_dim)
            w_kh = wk[cols]  # (d, D)
            k_h = k[:, cols]  # (N + M, d)
            for n in range(num_tokens):
                q_nh = q[n, cols]
                r = q_nh @ w_kh  # (D,)
                key_sum += np.outer(r, r)
                logits = (k_h @ q_nh) * scale
                probs = np.exp(logits - logits.max())
                probs /= probs.sum()
                a = probs[num_tokens:]
                assert a.shape == (num_prompts,)
                prompt_sum += np.outer(a, a)
                rows += 1
    return key_sum, prompt_sum, rows


def assert_close(actual, expected, rtol, name=""):
    """Relative comparison scaled by the largest entry (the statistics span several decades)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, err_msg=name)


# ----------------------------------------------------------------------------------------------------------
# brute-force threshold rules (written from ALGORITHM.md, numpy + scipy)
# ----------------------------------------------------------------------------------------------------------
def reference_adaptive(values, offset: float = 0.0) -> int:
    v = np.asarray(values, dtype=np.float64)
    size = v.shape[0]
    assert size >= 3
    if size >= 128:
        curve = gaussian_filter1d(v, sigma=10, mode="reflect")
        trim = int(size * 0.015)
    else:
        curve, trim = v, 0
    second = np.diff(np.diff(curve))
    window = second[trim : len(second) - trim]
    knee = int(np.argmax(window)) + trim + 1
    threshold = v[knee]
    split = int(np.nonzero(v >= threshold)[0].max())
    if offset >= 1:
        split += int(offset)
    else:
        split += int(offset * (size - split))
    return min(split, size - 1)


def reference_times(values, factor: float) -> int:
    v = np.asarray(values, dtype=np.float64)
    limit = factor * v[-1]
    for index, value in enumerate(v):
        if value <= limit:
            return index
    raise AssertionError("unreachable for a descending curve")


def reference_projector(matrix: np.ndarray, split: int, eta: float) -> np.ndarray:
    values, vectors = np.linalg.eigh(0.5 * (matrix + matrix.T))
    vectors = vectors[:, ::-1]  # descending
    null = vectors[:, split:]
    basis = null @ null.T
    basis = basis / np.linalg.norm(basis, "fro")
    return eta * basis + (1 - eta) * np.eye(matrix.shape[0])


def random_spectrum(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    i = np.arange(size)
    if kind == "exp":
        v = np.exp(-i * rng.uniform(2, 12) / size) * (1 + 0.05 * rng.standard_normal(size))
    elif kind == "knee":  # a plateau of big values then a floor: a clear elbow
        cut = rng.integers(1, size - 1)
        v = np.where(i < cut, 10.0 + rng.standard_normal(size), 1e-3 * rng.random(size))
    elif kind == "power":
        v = (i + 1.0) ** -rng.uniform(0.5, 3) + 1e-4 * rng.random(size)
    else:  # eigenvalues of a random low-rank-plus-noise PSD matrix
        a = rng.standard_normal((size, max(1, size // 4)))
        v = np.linalg.eigvalsh(a @ a.T + 1e-3 * np.eye(size))
    return np.sort(np.abs(v))[::-1].copy()


# ----------------------------------------------------------------------------------------------------------
# 1. C1 / C2 brute force through the prompted model
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_statistics_match_brute_force(family, attn, images):
    model = prompted_model(family, attn)
    layers = prompted_layers(model)
    num_heads = model.base_model.model.config.num_attention_heads
    recorder = BlockInputs(layers)
    reports = model.update_null_space([images])
    recorder.remove()

    batch = images.shape[0]
    assert len(layers) == 2 and len(reports) == 2
    for index, layer in enumerate(layers):
        assert len(recorder.inputs[index]) == 1
        block_input = recorder.inputs[index][0]
        tokens = NUM_IMAGE_TOKENS + (family == "deit")  # CLS (+ distillation token) + patches
        assert block_input.shape[:2] == (batch, tokens)
        key_sum, prompt_sum, rows = brute_force_sums(layer, block_input, num_heads)
        assert rows == batch * num_heads * tokens

        state = layer.vpt_nsp_null_space["default"]
        assert state.key_covariance.dtype == torch.float64
        assert float(state.rows) == rows
        assert reports[index].rows == rows
        assert int(state.tasks_seen) == 1
        assert_close(state.key_covariance.numpy(), key_sum / rows, 5e-7, f"C1, layer {index}")
        assert_close(state.prompt_covariance.numpy(), prompt_sum / rows, 2e-6, f"C2, layer {index}")
        # C2's rows sum to at most 1 (prompt mass of a softmax row): Σ_ij C2_ij = mean (Σ a)² ≤ 1.
        assert 0 < state.prompt_covariance.sum() <= 1

        # Projectors and null dims from the stored statistics, built by hand (default η = 0.97, adaptive).
        config = model.peft_config["default"]
        for stat, projector, eta, dim in (
            (state.key_covariance, state.key_projector, config.eta1, 0),
            (state.prompt_covariance, state.prompt_projector, config.eta2, 1),
        ):
            stat = stat.numpy()
            values = np.linalg.eigvalsh(0.5 * (stat + stat.T))[::-1]
            split = reference_adaptive(values)
            assert int(state.null_dims[dim]) == stat.shape[0] - split
            assert_close(projector.numpy(), reference_projector(stat, split, eta), 1e-5, "projector")
        np.testing.assert_array_equal(state.previous_prompt.numpy(), layer.vpt_nsp_prompt["default"].detach().numpy())


def test_statistics_brute_force_many_batches_and_chunks(images):
    """One task of several unequal batches, softmax chunked: still ``Σ over the task / task rows``."""
    model = prompted_model("vit", "eager", seed=3)
    layers = prompted_layers(model)
    recorder = BlockInputs(layers)
    batches = [images[:1], images[1:5], images[5:]]
    model.update_null_space(batches, chunk_size=3)
    recorder.remove()
    for index, layer in enumerate(layers):
        sums = [brute_force_sums(layer, x, 4) for x in recorder.inputs[index]]
        rows = sum(s[2] for s in sums)
        assert rows == images.shape[0] * 4 * NUM_IMAGE_TOKENS
        state = layer.vpt_nsp_null_space["default"]
        assert float(state.rows) == rows
        assert_close(state.key_covariance.numpy(), sum(s[0] for s in sums) / rows, 5e-7, "C1")
        assert_close(state.prompt_covariance.numpy(), sum(s[1] for s in sums) / rows, 2e-6, "C2")


# ----------------------------------------------------------------------------------------------------------
# 2. accumulation over two tasks
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task_weighting", ["equal", "size"])
def test_two_task_accumulation(task_weighting, images):
    model = prompted_model("vit", "eager", seed=5, task_weighting=task_weighting)
    layers = prompted_layers(model)
    second_task = torch.randn(3, *images.shape[1:], generator=torch.Generator().manual_seed(7)) * 2 + 0.5

    recorder = BlockInputs(layers)
    model.update_null_space([images])
    model.update_null_space([second_task])
    recorder.remove()
    assert model.tasks_seen() == 2

    for index, layer in enumerate(layers):
        assert len(recorder.inputs[index]) == 2
        (c1_a, c2_a, rows_a), (c1_b, c2_b, rows_b) = (brute_force_sums(layer, x, 4) for x in recorder.inputs[index])
        assert (rows_a, rows_b) == (6 * 4 * NUM_IMAGE_TOKENS, 3 * 4 * NUM_IMAGE_TOKENS)
        if task_weighting == "equal":
            expected_c1 = c1_a / rows_a + c1_b / rows_b
            expected_c2 = c2_a / rows_a + c2_b / rows_b
        else:
            expected_c1 = (c1_a + c1_b) / (rows_a + rows_b)
            expected_c2 = (c2_a + c2_b) / (rows_a + rows_b)
        state = layer.vpt_nsp_null_space["default"]
        assert int(state.tasks_seen) == 2
        assert float(state.rows) == rows_a + rows_b
        assert_close(state.key_covariance.numpy(), expected_c1, 5e-7, f"C1 {task_weighting}")
        assert_close(state.prompt_covariance.numpy(), expected_c2, 2e-6, f"C2 {task_weighting}")
        if task_weighting == "size":
            # A sample-weighted mean of softmax-mass Grams stays a Gram of one "average row".
            assert 0 < float(state.prompt_covariance.sum()) <= 1


# ----------------------------------------------------------------------------------------------------------
# 3. adaptive rule and Gaussian smoothing vs scipy
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [3, 5, 20, 81, 128, 400, 768])
@pytest.mark.parametrize("sigma", [10.0, 2.5, 0.7])
def test_gaussian_smooth_matches_scipy(size, sigma):
    rng = np.random.default_rng(size * 7 + int(sigma * 10))
    values = rng.standard_normal(size)
    expected = gaussian_filter1d(values, sigma, mode="reflect", truncate=4.0)
    actual = gaussian_smooth(torch.from_numpy(values), sigma).numpy()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", [4, 10, 64, 127, 128, 384, 768])
def test_adaptive_split_matches_reference(size):
    rng = np.random.default_rng(1000 + size)
    checked = 0
    for trial in range(24):
        values = random_spectrum(rng, size, ["exp", "knee", "power", "psd"][trial % 4])
        tensor = torch.from_numpy(values)
        for offset in (0.0, 0.5, 0.25, 3, 1, size):
            expected = reference_adaptive(values, offset)
            actual = adaptive_split_index(tensor, offset)
            assert actual == expected, (trial, offset, actual, expected)
            assert 0 <= actual <= size - 1
            checked += 1
    assert checked == 24 * 6


def test_adaptive_split_hand_computed():
    # K < 128: no smoothing. v = [10, 9, 1, 0.9, 0.8]: first differences [-1, -8, -0.1, -0.1], second
    # differences [-7, 7.9, 0] -> argmax 1 -> knee 1 + 1 = 2, threshold v[2] = 1 -> i* = 2 (null: 1, 0.9, 0.8).
    values = torch.tensor([10.0, 9.0, 1.0, 0.9, 0.8], dtype=torch.float64)
    assert adaptive_split_index(values) == 2
    assert adaptive_split_index(values, 0.5) == 2 + int(0.5 * 3)
    assert adaptive_split_index(values, 0.2) == 2  # int(0.6) = 0
    assert adaptive_split_index(values, 2) == 4
    assert adaptive_split_index(values, 10) == 4  # clipped: the null space keeps one direction
    # Ties: threshold taken at the knee, i* = the LAST index reaching it.
    # v = [5, 5, 5, 1, 1, 1]: second differences [0, -4, 4, 0] -> argmax 2 -> knee 3, threshold 1 -> i* = 5.
    values = torch.tensor([5.0, 5.0, 5.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    assert adaptive_split_index(values) == 5
    # K < 3: no second difference; the null space is the last direction.
    assert adaptive_split_index(torch.tensor([3.0, 1.0], dtype=torch.float64)) == 1
    assert adaptive_split_index(torch.tensor([3.0], dtype=torch.float64)) == 0


# ----------------------------------------------------------------------------------------------------------
# 4. times rule; the null space is never empty
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 2, 4, 30, 200])
@pytest.mark.parametrize("factor", [1.0, 2.0, 10.0, 1e6])
def test_times_split_matches_reference(size, factor):
    rng = np.random.default_rng(size + int(factor))
    for trial in range(8):
        values = random_spectrum(rng, max(size, 3), ["exp", "knee", "power", "psd"][trial % 4])[:size]
        assert times_split_index(torch.from_numpy(values), factor) == reference_times(values, factor)
    constant = torch.full((size,), 3.0, dtype=torch.float64)
    assert times_split_index(constant, factor) == 0


def _degenerate_matrices(size: int):
    rng = np.random.default_rng(size)
    u = rng.standard_normal((size, 1))
    low_rank = rng.standard_normal((size, max(1, size // 3)))
    return {
        "zero": np.zeros((size, size)),
        "identity": 5.0 * np.eye(size),
        "rank1": u @ u.T,
        "low_rank": low_rank @ low_rank.T,
    }


@pytest.mark.parametrize("mode", ["adaptive", "times"])
@pytest.mark.parametrize("size", [1, 2, 4, 32, 160])
@pytest.mark.parametrize("kind", ["zero", "identity", "rank1", "low_rank"])
def test_null_space_never_empty(mode, size, kind):
    """ALGORITHM.md: "The null space must not be empty" -- also for rank-deficient PSD statistics, whose
    smallest eigenvalues come out of eigh as tiny negative numbers."""
    matrix = _degenerate_matrices(size)[kind]
    result = null_space_projector(torch.from_numpy(matrix), eta=1.0, mode=mode, times_factor=10.0)
    assert 1 <= result.null_dim <= size
    assert result.split_index == size - result.null_dim
    proj = result.matrix.numpy()
    assert np.isfinite(proj).all()
    np.testing.assert_allclose(np.linalg.norm(proj, "fro"), 1.0, rtol=1e-12)
    if mode == "times" and kind in ("rank1", "low_rank") and size >= 2:
        # values <= 10 · s_min with s_min ≈ 0: only (numerically) zero eigenvalues, never the column space.
        assert result.null_dim <= size - np.linalg.matrix_rank(matrix)


def test_times_mode_update_with_rank_deficient_key_statistics():
    """End to end: one 16×16 image with 8×8 patches gives N = 5 tokens, so C1 = Σ_h W_k,hᵀ G_h W_k,h has rank
    ≤ H·N = 20 < D = 32; its zero eigenvalues come out of eigh as ±1e-20. The `times` rule must still pick
    a non-empty null space (it holds at least the D − rank zero directions)."""
    base = tiny_model("vit", patch_size=8)
    model = get_peft_model(base, peft_nsp.VPTNSPConfig(prompt_length=4, threshold_mode="times", classifier="linear"))
    image = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    reports = model.update_null_space([image])
    for report, layer in zip(reports, prompted_layers(model)):
        state = layer.vpt_nsp_null_space["default"]
        rank = int(torch.linalg.matrix_rank(state.key_covariance, hermitian=True))
        assert rank <= 4 * 5 < 32
        assert 1 <= report.key_null_dim and 1 <= report.prompt_null_dim


# ----------------------------------------------------------------------------------------------------------
# 5. projector vs brute force, and its properties
# ----------------------------------------------------------------------------------------------------------
def _random_orthogonal(rng, size):
    q, r = np.linalg.qr(rng.standard_normal((size, size)))
    return q * np.sign(np.diag(r))


@pytest.mark.parametrize("size", [4, 16, 64, 200])
@pytest.mark.parametrize("eta", [1.0, 0.97, 0.5, 0.0])
def test_projector_matches_hand_construction(size, eta):
    rng = np.random.default_rng(size)
    basis = _random_orthogonal(rng, size)
    cut = max(1, size // 3)
    values = np.concatenate([np.linspace(50, 20, cut), np.geomspace(1e-2, 1e-5, size - cut)])
    stat = basis @ np.diag(values) @ basis.T
    split = reference_adaptive(values)
    result = null_space_projector(torch.from_numpy(stat), eta=eta)
    assert result.split_index == split and result.null_dim == size - split

    null = basis[:, split:]
    expected = eta * (null @ null.T) / np.linalg.norm(null @ null.T, "fro") + (1 - eta) * np.eye(size)
    proj = result.matrix.numpy()
    assert result.matrix.dtype == torch.float64
    np.testing.assert_allclose(proj, expected, atol=1e-10)
    np.testing.assert_allclose(proj, proj.T, atol=1e-12)

    if eta == 1.0:
        k = size - split
        np.testing.assert_allclose(np.linalg.norm(proj, "fro"), 1.0, rtol=1e-12)
        # non-null directions are annihilated, null directions scaled by 1/sqrt(k)
        np.testing.assert_allclose(proj @ basis[:, :split], 0.0, atol=1e-10)
        np.testing.assert_allclose(proj @ null, null / math.sqrt(k), atol=1e-10)
        # hence the update keeps condition 1: rows of stat's column space see nothing of P u
        update = rng.standard_normal(size)
        assert abs(values[:split] @ (basis[:, :split].T @ proj @ update)) < 1e-9
        np.testing.assert_allclose(proj @ proj, proj / math.sqrt(k), atol=1e-10)


@pytest.mark.parametrize("factor", [1.0, 5.0, 1e3])
def test_projector_times_mode_matches_hand_construction(factor):
    rng = np.random.default_rng(11)
    size = 24
    basis = _random_orthogonal(rng, size)
    values = np.sort(np.geomspace(1e3, 1e-3, size) * (1 + 0.1 * rng.random(size)))[::-1]
    stat = basis @ np.diag(values) @ basis.T
    split = reference_times(values, factor)
    result = null_space_projector(torch.from_numpy(stat), eta=0.9, mode="times", times_factor=factor)
    assert result.split_index == split and result.null_dim == size - split
    np.testing.assert_allclose(result.matrix.numpy(), reference_projector(stat, split, 0.9), atol=1e-10)


@pytest.mark.parametrize("offset", [0.5, 3])
def test_projector_offset_shrinks_null_space(offset):
    rng = np.random.default_rng(3)
    size = 40
    basis = _random_orthogonal(rng, size)
    values = np.concatenate([np.linspace(9, 8, 10), np.geomspace(1e-2, 1e-6, 30)])
    stat = basis @ np.diag(values) @ basis.T
    split = reference_adaptive(values, offset)
    assert split > reference_adaptive(values)
    result = null_space_projector(torch.from_numpy(stat), eta=1.0, offset=offset)
    assert result.split_index == split
    np.testing.assert_allclose(result.matrix.numpy(), reference_projector(stat, split, 1.0), atol=1e-10)


# ----------------------------------------------------------------------------------------------------------
# 6. memory: the B·H·N × D matrix of rows is never materialised
# ----------------------------------------------------------------------------------------------------------
class LargestAllocation(TorchDispatchMode):
    """Records the largest storage (in elements) of any tensor an aten op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.largest_op = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor) and leaf.device.type != "meta":
                size = leaf.untyped_storage().nbytes() // leaf.element_size()
                if size > self.largest:
                    self.largest, self.largest_op = size, (str(func), tuple(leaf.shape))
        return out


def test_collector_does_not_materialise_rows():
    """With D ≫ N + M and H = 8, every tensor a prompted forward needs (hidden states, attention scores,
    the chunked softmax of C2, the D × D statistics) is far smaller than the B·H·N × D row matrix, so the
    largest tensor created during `update_null_space` tells whether that matrix was built."""
    hidden, heads, batch, image = 256, 8, 16, 16
    model = prompted_model(
        "vit",
        "eager",
        seed=9,
        hidden_size=hidden,
        num_attention_heads=heads,
        intermediate_size=64,
        image_size=image,
        patch_size=4,
    )
    tokens = (image // 4) ** 2 + 1
    pixels = torch.randn(batch, 3, image, image, generator=torch.Generator().manual_seed(0))
    row_matrix = batch * heads * tokens * hidden
    with LargestAllocation() as recorder:
        model.update_null_space([pixels])
    assert float(prompted_layers(model)[0].vpt_nsp_null_space["default"].rows) == batch * heads * tokens
    assert recorder.largest < row_matrix / 4, (recorder.largest, row_matrix, recorder.largest_op)


# ----------------------------------------------------------------------------------------------------------
# 7. LayerNorm consistency loss
# ----------------------------------------------------------------------------------------------------------
def brute_force_ln_loss(prompts, previous) -> float:
    total = 0.0
    for prompt, old in zip(prompts, previous):
        prompt, old = prompt.detach().double().numpy(), old.detach().double().numpy()
        num_tokens, hidden = prompt.shape
        layer = 0.0
        for m in range(num_tokens):
            mean_new = sum(prompt[m]) / hidden
            mean_old = sum(old[m]) / hidden
            std_new = math.sqrt(sum((x - mean_new) ** 2 for x in prompt[m]) / hidden)
            std_old = math.sqrt(sum((x - mean_old) ** 2 for x in old[m]) / hidden)
            layer += abs(mean_new - mean_old) / num_tokens + abs(std_new - std_old) / num_tokens
        total += layer
    return total


@pytest.mark.parametrize("num_layers", [1, 3])
def test_layernorm_consistency_loss_matches_brute_force(num_layers):
    generator = torch.Generator().manual_seed(num_layers)
    prompts = [torch.rand(4, 24, generator=generator) * 2 - 1 for _ in range(num_layers)]
    previous = [torch.randn(4, 24, generator=generator) * (1 + i) + 0.3 * i for i in range(num_layers)]
    loss = layernorm_consistency_loss(prompts, previous)
    assert loss.shape == ()
    np.testing.assert_allclose(float(loss), brute_force_ln_loss(prompts, previous), rtol=1e-5)
    # identical prompts: zero; shifted/scaled prompts: exactly |shift| + |scale - 1|·std per token
    assert float(layernorm_consistency_loss(prompts, [p.clone() for p in prompts])) == pytest.approx(0.0, abs=1e-6)
    shifted = [2.0 * p + 0.25 for p in prompts]
    np.testing.assert_allclose(
        float(layernorm_consistency_loss(shifted, prompts)), brute_force_ln_loss(shifted, prompts), rtol=1e-5
    )


def test_layernorm_consistency_loss_gradient_matches_finite_differences():
    generator = torch.Generator().manual_seed(0)
    prompt = (torch.rand(3, 8, generator=generator, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    old = torch.randn(3, 8, generator=generator, dtype=torch.float64)
    layernorm_consistency_loss([prompt], [old]).backward()
    numeric = np.zeros((3, 8))
    step = 1e-6
    for m in range(3):
        for j in range(8):
            plus, minus = prompt.detach().clone(), prompt.detach().clone()
            plus[m, j] += step
            minus[m, j] -= step
            numeric[m, j] = (brute_force_ln_loss([plus], [old]) - brute_force_ln_loss([minus], [old])) / (2 * step)
    np.testing.assert_allclose(prompt.grad.numpy(), numeric, atol=1e-6)


def test_model_layernorm_loss_uses_previous_prompts(images):
    model = prompted_model("vit", "eager", seed=4)
    assert model.layernorm_consistency_loss().item() == 0.0  # before the first task
    model.update_null_space([images])
    layers = prompted_layers(model)
    old = [layer.vpt_nsp_prompt["default"].detach().clone() for layer in layers]
    with torch.no_grad():
        for layer in layers:
            layer.vpt_nsp_prompt["default"].mul_(1.5).add_(0.1)
    expected = brute_force_ln_loss([layer.vpt_nsp_prompt["default"] for layer in layers], old)
    np.testing.assert_allclose(model.layernorm_consistency_loss().item(), expected, rtol=1e-5)
