"""Datasets in the layouts users have from the reference implementation, and on-device augmentation."""

from translate.data.augment import Augment
from translate.data.layouts import collate, open_dataset

__all__ = ["Augment", "collate", "open_dataset"]
