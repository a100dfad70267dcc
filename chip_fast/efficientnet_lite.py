"""Kept for imports written before the re-foldering: the model lives in
``chip_fast.models.efficientnet_lite``."""
from .models.efficientnet_lite import (EfficientNetLite0, default_weights_path,  # noqa: F401
                                       load_efficientnet_lite0)
