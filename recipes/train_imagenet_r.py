# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""VPT-NSP² on ImageNet-R (10 tasks of 20 classes, the authors' 24,000 / 6,000 split lists) with the paper's
recipe.

    accelerate launch recipes/train_imagenet_r.py --dataset /path/to/data [--projection false] [--help]
"""

from peft_nsp.scripts import run_recipe


if __name__ == "__main__":
    run_recipe("imagenet-r")
