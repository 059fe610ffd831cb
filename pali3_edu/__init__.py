"""pali3-edu: build PaLI-3 (SigLIP vision encoder + UL2 encoder-decoder) from scratch.

The package is the one reference implementation the course notebooks explain and test against.
Modules follow the data flow: ``data`` → ``tokenizer`` → ``vit``/``siglip`` → ``ul2``/``encdec``
→ ``generate`` → ``train``.
"""

__version__ = "0.1.0"

from pali3_edu.config import get_config, list_presets  # noqa: F401
from pali3_edu.utils import data_dir, pick_device, seed_everything  # noqa: F401
