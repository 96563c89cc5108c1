"""Image transforms of the streaming image folders (Pillow images in, Pillow images out).

Each takes a ``numpy.random.Generator`` so that an image's augmentation depends only on the seed
the loader derives for it from (seed, epoch, step, position), never on which worker decodes it.

* :func:`random_resized_crop`: the Inception crop (a random 8-100% of the area with aspect ratio
  in [3/4, 4/3], 10 tries, then a centre crop) resized to a square, bicubic, as the official
  AttentiveNAS training transform (its ``data/data_transform.py``: torchvision's
  RandomResizedCrop with bicubic interpolation).
* :func:`center_view`: the evaluation view: the shorter side resized to ``ceil(resolution /
  crop)``, then the centre ``resolution`` square (the official evaluation: 256 then 224, crop
  0.875), bicubic.
* :class:`AutoAugment`: the ImageNet AutoAugment policy the official code trains with
  (``augment: auto_augment_tf``, policy "v0", the policy of TensorFlow's EfficientNet code): one of
  25 pairs of operations, each applied with its probability at a magnitude drawn around its level.
"""
from __future__ import annotations

import math

import numpy as np

# Policy "v0": (operation, probability, level 0-10) pairs, as published with the official code's
# auto_augment_tf (AttentiveNAS data/auto_augment_tf.py, auto_augment_policy_v0).
POLICY_V0 = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateYRel", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)
MAX_LEVEL = 10.0
LEVEL_STD = 0.5  # the official code draws each magnitude from N(level, 0.5), clipped to [0, 10]
FILL = (124, 116, 104)  # ImageNet's mean pixel, rounded: what geometric operations fill with


def require_pil():
    """Pillow's (Image, ImageEnhance, ImageOps); ImportError saying how to install it."""
    try:
        from PIL import Image, ImageEnhance, ImageOps
    except ImportError:
        raise ImportError("image folders are read with Pillow, which is not installed: pip install "
                          "pillow (or nasops[images])") from None
    return Image, ImageEnhance, ImageOps


def crop_box(width: int, height: int, rng: np.random.Generator, scale=(0.08, 1.0),
             ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random crop of a width x height image: an area fraction in
    `scale` and an aspect ratio (w / h) in `ratio`; after 10 misses, the centre crop with the
    image's ratio clamped into `ratio`."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    if width / height < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif width / height > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def random_resized_crop(image, size: int, rng: np.random.Generator):
    """A random crop of `image` (crop_box) resized to size x size, bicubic."""
    Image, _, _ = require_pil()
    return image.resize((size, size), Image.BICUBIC, box=crop_box(*image.size, rng))


IMAGENET_EVAL_CROP = 0.875  # the official evaluation: resize to resolution / 0.875, centre crop


def eval_size(resolution: int, crop: float | None) -> int:
    """The size an evaluation view resizes to before its centre crop of `resolution`:
    ceil(resolution / crop) (crop None: the resolution, no crop)."""
    if crop is None:
        return resolution
    return math.ceil(resolution / crop - 1e-9)  # (1e-9: 224 / 0.875 is 256, not 256.00000001)


def center_view(image, resolution: int, crop: float = IMAGENET_EVAL_CROP):
    """The shorter side resized to ceil(resolution / crop) (the longer in proportion, floored),
    then the centre resolution x resolution square (offsets rounded)."""
    Image, _, _ = require_pil()
    short = eval_size(resolution, crop)
    width, height = image.size
    if width <= height:
        size = (short, int(short * height / width))
    else:
        size = (int(short * width / height), short)
    if size != image.size:
        image = image.resize(size, Image.BICUBIC)
    top, left = int(round((size[1] - resolution) / 2.0)), int(round((size[0] - resolution) / 2.0))
    return image.crop((left, top, left + resolution, top + resolution))


class AutoAugment:
    """The ImageNet AutoAugment policy "v0" (module docstring) on RGB Pillow images."""

    def __init__(self, policy=POLICY_V0):
        self.policy = policy

    def __call__(self, image, rng: np.random.Generator):
        for name, probability, level in self.policy[int(rng.integers(len(self.policy)))]:
            if rng.random() <= probability:
                magnitude = float(np.clip(rng.normal(level, LEVEL_STD), 0.0, MAX_LEVEL))
                image = self.apply(image, name, magnitude / MAX_LEVEL, rng)
        return image

    @staticmethod
    def apply(image, name: str, m: float, rng: np.random.Generator):
        """Operation `name` at magnitude m in [0, 1] (signed operations flip a fair coin)."""
        Image, ImageEnhance, ImageOps = require_pil()
        sign = -1.0 if rng.random() < 0.5 else 1.0
        if name in ("ShearX", "ShearY", "Rotate", "TranslateYRel", "TranslateXRel"):
            # the official code picks the resampling of each geometric operation at random
            resample = (Image.NEAREST, Image.BILINEAR, Image.BICUBIC)[int(rng.integers(3))]
            if name == "Rotate":
                return image.rotate(sign * 30.0 * m, resample=resample, fillcolor=FILL)
            if name == "ShearX":
                matrix = (1, sign * 0.3 * m, 0, 0, 1, 0)
            elif name == "ShearY":
                matrix = (1, 0, 0, sign * 0.3 * m, 1, 0)
            elif name == "TranslateXRel":
                matrix = (1, 0, sign * 0.45 * m * image.size[0], 0, 1, 0)
            else:
                matrix = (1, 0, 0, 0, 1, sign * 0.45 * m * image.size[1])
            return image.transform(image.size, Image.AFFINE, matrix, resample=resample,
                                   fillcolor=FILL)
        if name == "AutoContrast":
            return ImageOps.autocontrast(image)
        if name == "Equalize":
            return ImageOps.equalize(image)
        if name == "Invert":
            return ImageOps.invert(image)
        if name == "Solarize":
            return ImageOps.solarize(image, int(m * 256))
        if name == "SolarizeAdd":  # add to the pixels below 128, saturating
            add = int(m * 110)
            return image.point([min(255, i + add) if i < 128 else i for i in range(256)] * 3)
        if name == "Posterize":
            bits = int(m * 4) + 4
            return image if bits >= 8 else ImageOps.posterize(image, bits)
        enhance = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast,
                   "Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness}
        if name in enhance:
            return enhance[name](image).enhance(1.8 * m + 0.1)
        raise ValueError(f"AutoAugment operation {name!r} is not known; known: AutoContrast, "
                         f"Brightness, Color, Contrast, Equalize, Invert, Posterize, Rotate, "
                         f"Sharpness, ShearX, ShearY, Solarize, SolarizeAdd, TranslateXRel, "
                         f"TranslateYRel")
