# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""The benchmark recipes' shared code (the scripts in `recipes/` are thin wrappers): command line with the authors'
defaults, data loading (including the authors' split lists), the run itself."""

from .arguments import BENCHMARKS, Benchmark, DataArguments, ModelArguments, RecipeArguments, parse_recipe_arguments
from .data import RecipeData, load_recipe_data
from .run import load_backbone, run_recipe, write_summary


__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "DataArguments",
    "ModelArguments",
    "RecipeArguments",
    "RecipeData",
    "load_backbone",
    "load_recipe_data",
    "parse_recipe_arguments",
    "run_recipe",
    "write_summary",
]
