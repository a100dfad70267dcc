"""chip_fast: fast CHIP (channel-wise disentangled interpretation) for convolutional networks.

    imp = chip_fast.distill_all_classes(model, chip_fast.ImageFolderSource("train"))
    maps = chip_fast.explain(model, imp, images, classes)
"""
__version__ = "0.1.0"

from .data.sources import ImageError, ImageFolderSource, TensorSource  # noqa: E402
from .data.preprocess import Preprocess  # noqa: E402
from .distill.job import distill_all_classes  # noqa: E402
from .maps.explain import ClassNotDistilledError, Explanation, explain, explain_available  # noqa: E402
from .atlas.collect import ChannelAtlas, top_channels  # noqa: E402
from .util.locks import LockedError  # noqa: E402
from .importance.core import Importance, ImportanceFileError, load_importance  # noqa: E402
from .models.layers import LayerError, default_layers  # noqa: E402
from .distill.plan import DistillSettings  # noqa: E402


def __getattr__(name: str):
    # The evaluation harness imports matplotlib/grad-cam lazily; keep `import chip_fast` light.
    if name in ("evaluate", "ChipCAM", "explain_func"):
        from . import evaluation
        return getattr(evaluation, name)
    raise AttributeError(f"module 'chip_fast' has no attribute {name!r}")

__all__ = [
    "ChannelAtlas", "ChipCAM", "ClassNotDistilledError", "DistillSettings", "Explanation",
    "ImageError", "ImageFolderSource", "Importance", "ImportanceFileError", "LayerError",
    "LockedError", "Preprocess", "TensorSource", "default_layers", "distill_all_classes",
    "evaluate", "explain", "explain_available", "explain_func", "load_importance", "top_channels",
]
