# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""VPT-NSP² on CIFAR-100 split into 10 tasks (default) or 20 (`--num_tasks 20`) with the paper's recipe.

accelerate launch recipes/train_cifar100.py [--num_tasks 20] [--dataset uoft-cs/cifar100] [--projection false]
"""

from peft_nsp.scripts import run_recipe


if __name__ == "__main__":
    run_recipe("cifar100")
