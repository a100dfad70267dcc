"""Evaluation harness: localization (MaxBoxAcc, and MaxBoxAccV2 as clovaai/wsolevaluation
computes it), faithfulness, pointing and sanity metrics of CHIP and of peer methods (CAM,
pytorch-grad-cam's Grad-CAM family and its RefineCAM) on the same images; and a check of the
importance itself by zeroing a class's top channels (``ablation``)."""
from .annotations import AnnotationError, read_loc_csv, read_voc_xml
from .dataset import LocDataset, LocSample, load_val_dir
from .interop import ChipCAM, chip_method, explain_func
from .runner import EvalSettings, evaluate

__all__ = ["AnnotationError", "ChipCAM", "EvalSettings", "LocDataset", "LocSample",
           "chip_method", "evaluate", "explain_func", "load_val_dir", "read_loc_csv",
           "read_voc_xml"]
