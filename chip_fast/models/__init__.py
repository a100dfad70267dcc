"""The model: loading classifiers (``loading``, ``efficientnet_lite``), naming and choosing its
layers (``layers``), and cutting it at a layer into prefix and tail (``split``, the one way to
get an activation), whose graphs are simplified before they run (``folding``: functional
convolutions as modules, batch norms folded; ``cpu_fusion``: convolutions fused with their
activations on a CPU)."""
from .loading import load_model, preprocess_of

__all__ = ["load_model", "preprocess_of"]
