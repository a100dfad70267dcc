"""Which methods ``chip-fast evaluate`` runs, decided and checked before any of them runs.

Owns the method names (the default list leads with Refined CHIP, the headline method), building
their map functions, and the checks that a CHIP method can run at all on the images: the
importance belongs to the model, the layers exist and are distilled, the images' classes are
distilled. A run that cannot score CHIP fails (or narrows, with ``--only-distilled``) at once,
instead of after minutes of peers. The runner (``runner``) then scores what this module built.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .dataset import LocDataset
from .peers import MapFn

METHOD_NAMES = ("chip-refined", "chip", "cam", "gradcam", "gradcam++", "layercam",
                "gradcam++-refined", "layercam-refined")
DEFAULT_METHODS = ("chip-refined,chip,gradcam,gradcam++,layercam,gradcam++-refined,"
                   "layercam-refined,cam")
# Products over all the layers (one map each), not one map per layer
MULTI_LAYER = ("chip-refined", "gradcam++-refined", "layercam-refined")


def requested_methods(text: str | None, importance, log: Callable[[str], None]) -> list[str]:
    """The method names of ``--methods`` (None: the default list), checked: unknown names and
    CHIP methods without an importance file are refused when asked for by name."""
    names = [m.strip().lower() for m in (text or DEFAULT_METHODS).split(",") if m.strip()]
    unknown = [n for n in names if n not in METHOD_NAMES]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(METHOD_NAMES)}")
    chip = [n for n in names if n.startswith("chip")]
    if importance is None and chip:
        if text is not None:
            raise ValueError(f"method(s) {', '.join(chip)} need an importance file: give "
                             "--importance (from chip-fast distill)")
        log("[evaluate] no --importance: the CHIP methods are not run, only the peers")
        return [n for n in names if n not in chip]
    if text is None and importance is not None and len(importance.layers) == 1:
        # Refined CHIP of one layer is that layer's CHIP map: one row, not two equal ones
        names.remove("chip-refined")
    return names


def check_refined_peers(names: Sequence[str], layers: Sequence[str], asked: bool) -> list[str]:
    """RefineCAM multiplies the maps of two or more layers: with one layer it is refused when
    asked for by name (``asked``) and left out of the default list (it would repeat its base)."""
    refined = [n for n in names if n.endswith("-refined") and n != "chip-refined"]
    if len(layers) >= 2 or not refined:
        return list(names)
    if asked:
        raise ValueError(f"method(s) {', '.join(refined)} multiply the maps of two or more "
                         f"layers; --layers gives {len(layers)} ({', '.join(layers)})")
    return [n for n in names if n not in refined]


def check_chip_layers(names: Sequence[str], layers: Sequence[str], importance,
                      log: Callable[[str], None]) -> None:
    """Method chip needs at least one of ``layers`` distilled; the others are named now."""
    if "chip" not in names:
        return
    missing = importance.missing_layers(layers)
    if len(missing) == len(layers):
        raise ValueError(f"method chip: none of the layers {', '.join(layers)} is distilled "
                         f"(the importance holds {', '.join(importance.layers)}): give --layers "
                         "from those, or leave chip out of --methods")
    for layer in missing:
        log(f"[evaluate] chip@{layer}: not run, the layer is not distilled (the importance "
            f"holds {', '.join(importance.layers)})")


def distilled_images(dataset: LocDataset, importance, importance_path: str, only_distilled: bool,
                     log: Callable[[str], None]) -> LocDataset:
    """The images CHIP can map: all of ``dataset`` when every image's class is distilled; else
    a refusal that says which are not, or (``only_distilled``) the images whose class is."""
    absent = set(importance.missing_classes(dataset.labels))
    keep = [i for i, c in enumerate(dataset.labels) if c not in absent]
    if len(keep) == len(dataset):
        return dataset
    names = importance.class_names or []
    kept = set(keep)
    lacking = [i for i in range(len(dataset)) if i not in kept]
    examples = ", ".join(
        f"{dataset.image_paths[i].stem} (class {dataset.labels[i]}"
        + (f" {names[dataset.labels[i]]}" if dataset.labels[i] < len(names) else "") + ")"
        for i in lacking[:3])
    what = (f"{len(lacking)} of {len(dataset)} images show classes that {importance_path} does "
            f"not hold (e.g. {examples}; it holds {len(importance.classes)} of "
            f"{importance.num_classes} "
            "classes), so CHIP cannot map them")
    if not keep:
        raise ValueError(f"{what}: distil the classes of these images, or leave the chip "
                         "methods out of --methods")
    if not only_distilled:
        raise ValueError(f"{what}: distil those classes, pass --only-distilled to score every "
                         f"method on the {len(keep)} images whose class is distilled, or leave "
                         "the chip methods out of --methods")
    log(f"[evaluate] --only-distilled: every method is scored on the {len(keep)} of "
        f"{len(dataset)} images whose class is distilled")
    return LocDataset([dataset.image_paths[i] for i in keep], [dataset.truth[i] for i in keep],
                      [dataset.labels[i] for i in keep], dataset.preprocess)


def build_methods(model: torch.nn.Module, names: Sequence[str], layers: Sequence[str],
                  importance=None, log: Callable[[str], None] = print, *,
                  redistill=None) -> dict[str, MapFn]:
    """``{"gradcam@features.18": fn, ...}`` for each method at each layer; CAM only at layers
    that feed the global pooling, CHIP only at distilled layers, chip-refined once (over the
    importance's layers) and each RefineCAM once (over ``layers``). ``redistill``: how the
    CHIP methods' sanity check gets the randomised model's importance (``chip_method``)."""
    from .interop import chip_method
    from .peers import find_gap_head, peer
    methods: dict[str, MapFn] = {}
    for name in names:
        if name == "chip-refined":
            methods["chip-refined"] = chip_method(importance, None, redistill=redistill)
            continue
        if name in MULTI_LAYER:
            methods[name] = peer(name, list(layers))
            continue
        for layer in layers:
            if name == "chip":
                if layer in importance.layers:
                    methods[f"chip@{layer}"] = chip_method(importance, [layer],
                                                            redistill=redistill)
            elif name == "cam":
                stage, head = find_gap_head(model)
                mod = dict(model.named_modules())[layer]
                if not (layer == stage or layer.startswith(stage + ".")) or _out_channels(mod) != head.in_features:
                    # CAM is only defined where the features feed the pooling
                    log(f"[evaluate] cam@{layer}: not run, CAM needs the layer feeding the "
                        f"global pooling ({stage})")
                    continue
                methods[f"cam@{layer}"] = peer("cam", layer)
            else:
                methods[f"{name}@{layer}"] = peer(name, layer)
    return methods


def _out_channels(module: torch.nn.Module) -> int | None:
    convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    return convs[-1].out_channels if convs else None
