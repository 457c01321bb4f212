# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""VPT-NSP² on your own images: an `imagefolder` tree (`<class>/<image>`, optionally under `train/` and `test/`) or a
Hub dataset id, its classes shuffled (`--seed`) and cut into `--num_tasks` tasks.

    accelerate launch recipes/train_imagefolder.py --dataset /path/to/images [--num_tasks 5] [--projection false]

Defaults for data that is not a benchmark of the paper (see `--help`): 5 tasks, 5 epochs, batch 32, temperature 1,
η 0.97, the analytic head (`--classifier linear`: linear heads with classifier alignment); the authors' backbone, optimizer and augmentation. Output:
`runs/imagefolder-nsp-seed2024`.
"""

from peft_nsp.scripts import run_recipe


if __name__ == "__main__":
    run_recipe("imagefolder")
