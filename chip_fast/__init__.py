"""chip_fast: fast CHIP (channel-wise disentangled interpretation) for convolutional networks.

    model = chip_fast.load_model("mobilenet_v2")
    imp = chip_fast.distill_all_classes(model, chip_fast.ImageFolderSource("train"))
    maps = chip_fast.explain(model, imp, images, classes)

The subpackages follow the data flow: ``models`` (loading, layers, the split at a layer) ->
``data`` (sources, preprocessing) -> ``ops`` / ``kernels`` (perturbation, streamed sums) ->
``distill`` (the job) -> ``solve`` (statistics, Lasso) -> ``importance`` (the result and its
file) -> ``maps`` (explain) -> ``atlas`` / ``report`` (what people look at) -> ``evaluation``;
``cli`` is the command line and ``util`` the plumbing.
"""
from .version import __version__
from .atlas.collect import ChannelAtlas, top_channels
from .data.preprocess import Preprocess
from .data.sources import ImageError, ImageFolderSource, TensorSource
from .distill.run import distill_all_classes
from .distill.settings import DistillSettings, JobOptions
from .importance.core import Importance, ImportanceFileError, load_importance
from .maps.explain import ClassNotDistilledError, Explanation, explain, explain_available
from .models.layers import LayerError, default_layers
from .models.loading import load_model, preprocess_of
from .util.locks import LockedError


def __getattr__(name: str):
    # The evaluation harness imports matplotlib/grad-cam lazily; keep `import chip_fast` light.
    if name in ("evaluate", "ChipCAM", "explain_func"):
        from . import evaluation
        return getattr(evaluation, name)
    raise AttributeError(f"module 'chip_fast' has no attribute {name!r}")


__all__ = [
    "ChannelAtlas", "ChipCAM", "ClassNotDistilledError", "DistillSettings", "Explanation",
    "ImageError", "ImageFolderSource", "Importance", "ImportanceFileError", "JobOptions",
    "LayerError", "LockedError", "Preprocess", "TensorSource", "__version__", "default_layers",
    "distill_all_classes", "evaluate", "explain", "explain_available", "explain_func",
    "load_importance", "load_model", "preprocess_of", "top_channels",
]
