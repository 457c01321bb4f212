# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""A 2-task run, launched by tests/test_multiprocess.py alone or under `accelerate launch`.

Every process writes its prompts, projectors and metrics to ``<output_dir>/rank-<r>.pt``. One optimizer step per
epoch covers the whole task (per-device batch × processes = task size), so the averaged DDP gradient equals the
single-process full-batch gradient and the runs agree to float tolerance.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import PartialState


sys.path.insert(0, str(Path(__file__).parent))
from testing_utils import blob_images, prompted_layers, tiny_model, to_tensor  # noqa: E402

from peft_nsp import VPTNSPConfig  # noqa: E402
from peft_nsp.loop import ClassIncrementalConfig, run_class_incremental  # noqa: E402
from peft_nsp.trainer import NSPConfig  # noqa: E402


def main(output_dir: str, per_device_batch: int) -> None:
    args = NSPConfig(
        output_dir=output_dir,
        num_train_epochs=3,
        per_device_train_batch_size=per_device_batch,
        per_device_eval_batch_size=5,
        statistics_batch_size=3,
        learning_rate=0.05,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=1,
        save_strategy="no",
        logging_steps=50,
    )
    # 4 classes × 6 images: 12 training images per task; 7 test images per class (uneven last eval batches).
    result = run_class_incremental(
        tiny_model("vit", seed=3),
        VPTNSPConfig(prompt_length=2, classifier="linear"),
        args,
        ClassIncrementalConfig(num_tasks=2),
        blob_images(4, 6),
        blob_images(4, 7, seed=1),
        train_transform=to_tensor,
    )
    layers = prompted_layers(result.model)
    rank = PartialState().process_index
    torch.save(
        {
            "prompts": [m.vpt_nsp_prompt["default"].detach().cpu() for m in layers],
            "key_projectors": [m.vpt_nsp_null_space["default"].key_projector.cpu() for m in layers],
            "prompt_projectors": [m.vpt_nsp_null_space["default"].prompt_projector.cpu() for m in layers],
            "key_covariances": [m.vpt_nsp_null_space["default"].key_covariance.cpu() for m in layers],
            "metrics": result.metrics.to_dict(),
        },
        Path(output_dir) / f"rank-{rank}.pt",
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
