"""The import path of `translate.inference.infer` before the package had floors: scripts written
against it (../shared/tools/gpu-bench's network timing) still find ``run`` and ``load_translator`` here."""

from translate.inference.infer import run  # noqa: F401
from translate.inference.plan import RunSummary  # noqa: F401
from translate.inference.translator import load_translator  # noqa: F401
