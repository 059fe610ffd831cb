"""Import of Hugging Face ``transformers`` weights into the course models.

- :func:`siglip_from_hf`, :func:`vit_from_hf` (``pali3_edu.convert.siglip``): SigLIP / its ViT.
- :func:`t5_from_hf` (``pali3_edu.convert.t5``): T5 v1.1 / Flan-T5 / UL2 encoder-decoders.

Offline, the tests build the ``transformers`` models from small configs with random weights;
online, the same functions take ``from_pretrained`` models (``google/siglip-base-patch16-224``,
``google/t5-v1_1-base`` ...).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "siglip_from_hf": "pali3_edu.convert.siglip",
    "vit_from_hf": "pali3_edu.convert.siglip",
    "t5_from_hf": "pali3_edu.convert.t5",
}


def __getattr__(name: str) -> Any:  # lazy: importing one converter never imports the others
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pali3_edu.convert' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
