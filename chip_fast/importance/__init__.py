"""The result of a distillation: the ``Importance`` object (``core``) and its file format with
integrity digests (``file``)."""
from .core import Importance, ImportanceFileError, load_importance

__all__ = ["Importance", "ImportanceFileError", "load_importance"]
