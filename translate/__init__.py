"""translate: image-to-image translation with deep generative models."""

import os
from pathlib import Path

__version__ = "0.1.0"


def resource(name: str) -> Path:
    """The top-level ``recipes/`` or ``weights/`` folder.

    From a source checkout (``pip install -e .``) it sits beside the package; an installed copy
    (the Docker image) says where with ``TRANSLATE_HOME``.
    """
    home = os.environ.get("TRANSLATE_HOME")
    return (Path(home) if home else Path(__file__).resolve().parent.parent) / name
