# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""VPT-NSP² on DomainNet (10 tasks of 20 of its 200 most frequent classes, all six domains mixed) with the paper's
recipe.

    accelerate launch recipes/train_domainnet.py --dataset /path/to/data [--projection false] [--help]
"""

from peft_nsp.scripts import run_recipe


if __name__ == "__main__":
    run_recipe("domainnet")
