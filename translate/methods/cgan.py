"""Class-conditional GAN: DCGAN nets with a class embedding in G and a projection discriminator.

Trained on one subfolder per class; fake images get labels drawn uniformly. G concatenates a class
embedding to z, D adds <embed(y), phi(x)> to its score (Miyato & Koyama 2018); see nets/dcgan.py.
The training step, losses (``loss.gan_mode``: vanilla non-saturating, hinge or lsgan) and sample
grid (one row per class) are DCGAN's, which handles labels whenever ``num_classes > 0``.
"""

from __future__ import annotations

from translate.core.errors import TranslateError
from translate.core.registry import METHODS
from translate.methods.dcgan import DCGAN


@METHODS.register("cgan")
class ConditionalGAN(DCGAN):
    """Class-conditional DCGAN. Exports ``G`` (``forward(z, label, truncation)``); the class names are
    kept in the weights metadata (``info["classes"]``)."""

    data_kind = "classes"

    def count_classes(self) -> int:
        classes = self.info.get("classes", [])
        if len(classes) < 2:
            found = f"only {classes[0]!r}" if classes else "none"
            raise TranslateError(f"cgan needs at least 2 classes (one subfolder each) in {self.recipe.data.path}; "
                                 f"found {found}")
        return len(classes)
