"""Images in: the one preprocessing per family (``preprocess``), class orders (``classes``), and
the sources a distillation reads with the views it makes of them (``sources``)."""
from .preprocess import Preprocess
from .sources import ImageError, ImageFolderSource, TensorSource, as_source

__all__ = ["ImageError", "ImageFolderSource", "Preprocess", "TensorSource", "as_source"]
