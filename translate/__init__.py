"""translate: image-to-image translation with deep generative models."""

__version__ = "0.1.0"
