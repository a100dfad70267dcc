"""What a distillation computes (``DistillSettings``: every choice that changes the result, all
recorded in the importance file) and how a run goes about it (``JobOptions``: where it writes,
checkpoints, runs and reports; none of these change the result)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import rng
from ..data.sources import views_per_image
from ..ops.perturb import FILLS
from ..solve.lasso import DEFAULT_MAX_ITER, DEFAULT_TOL

RESPONSES = ("logit", "softmax", "log_softmax")
TAIL_PATHS = ("auto", "elementwise")
BASELINES = ("none", "view")
MASK_DESIGNS = ("auto",) + rng.MASK_DESIGNS
ESTIMATORS = ("auto", "sampled")
CONTROLS = ("none", "view_slopes")
DTYPES = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class DistillSettings:
    """Every choice that changes the result; all are written into the importance file."""
    # 8,192: with the exact estimator at the affine layers and the view slopes, where two seeds
    # of MobileNetV2 share 9 of a class's top 10 channels (4,096: 8 of 10), for about one plain
    # pass over the photos on a 2-core CPU, less with AMX (docs/stability.md, "The default
    # sample count" and "A bfloat16 prefix, and a machine with AMX").
    samples_per_class: int = 8192
    seed: int = 0
    p_keep: float = 0.5
    # "zero": a disabled channel is absent. Its importance is then what the class loses when the
    # channel's content is removed, i.e. presence evidence; with "noise"/"mean" (METHOD.md) a
    # channel that is *below average* on the class's photos and lowers the score when present
    # also gets positive weight, and paints the background (measured: docs/evaluation.md, "The
    # paper's setting").
    fill: str = "zero"
    response: str = "logit"
    alpha: float = 0.1
    nonneg: bool = False
    augment: bool | int = False
    # Perturbed samples per tail forward; None: 64 on a CPU, where a batch that stays in cache
    # makes the tails faster than 256 (docs/design.md, "Measured choices"), else 256.
    batch_size: int | None = None
    classes_per_unit: int = 8
    samples_per_unit: int = 512
    fill_stats_views: int = 1024   # views that estimate each channel's mean and std
    tol: float = DEFAULT_TOL
    max_iter: int = DEFAULT_MAX_ITER
    # Sample i belongs to fold i % folds (pair i // 2 to fold (i // 2) % folds with paired
    # masks); the sums are kept per fold, so a fit can be checked (and its penalty chosen) on
    # samples it did not see: Importance.refit, held-out R^2.
    folds: int = 4
    # Tail forwards in bfloat16 autocast (channels-last input) where the device has fast bf16:
    # "auto" means bfloat16 on CUDA and on CPUs with native bf16 instructions (AVX512-BF16 or
    # AMX), float32 elsewhere (emulated bf16 is no faster). Responses are always float32.
    tail_dtype: str = "auto"
    # The prefix (photo -> the layers' activations, the data every perturbed network starts
    # from) in bfloat16 (its outputs cast back to float32): "auto" means bfloat16 on CPUs with
    # native bf16, where the prefix runs about twice as fast and the importance agrees with a
    # float32 prefix's far inside the seeds' spread (an exact layer, which has none, at r
    # 0.9999: docs/stability.md, "A bfloat16 prefix, and a machine with AMX"); float32
    # elsewhere, CUDA included (not measured on a GPU). Maps always read float32.
    prefix_dtype: str = "auto"
    # "auto": a layer whose tail is affine in its spatial mean (global pooling + Linear) takes
    # the affine path, which draws the fill noise's spatial mean directly (METHOD.md) and never
    # materialises a perturbed activation; with zero or mean fill, a tail of per-channel ops and
    # a Linear over the flattened maps (VGG's classifier) takes the head path
    # (chip_fast.distill.linear_head); with zero fill, a tail that begins with other per-channel
    # ops (a depthwise convolution after an expand layer) runs them once per view
    # (chip_fast.distill.chain_per_view); "elementwise": every layer perturbs every element.
    # The file records the path each layer took (settings["paths"]).
    tail_path: str = "auto"
    # Patches kept per channel for the channel atlas (chip_fast.atlas.collect), cut from the prefix
    # passes the distillation makes anyway; 0: no atlas. In the identity, so a checkpoint made
    # without the atlas (which lacks the views already done) is not resumed into a job with one.
    atlas: int = 0
    # "view": each response y is taken minus p_keep times the unperturbed response y0 of the
    # same view for the same class, a control variate. The masks are independent of the view,
    # so the fitted weights estimate the same thing; but the photo-to-photo spread of y, which
    # the masks cannot explain, leaves the fit: where the tail is linear in the layer,
    # E[y | view] = p_keep * y0 + const exactly (any fill). One more tail forward per view
    # (measured: docs/evaluation.md, "The paper's setting"). "none": METHOD.md's raw response.
    baseline: str = "view"
    # How the keep masks are drawn (chip_fast.rng). "antithetic": samples come in pairs, the
    # second keeping exactly the channels the first drops (p_keep 0.5 only: then both are
    # equally likely, so the estimand is unchanged); the even part of a response (its view's
    # offset, interactions between pairs of channels) cancels inside each pair. "orthogonal":
    # such pairs whose first members are the rows of a randomised Hadamard design, so that over
    # each block of rows every channel and every pair of channels is kept exactly as often as
    # the population says (the regression's main effects no longer pick up each other's noise).
    # A response linear in the mask has no even part left after the per-view baseline, and
    # there a pair repeats one term, doubling the variance. "independent": every mask its own
    # draw. "auto": orthogonal at p_keep 0.5 when some layer is sampled through a tail that is
    # not linear in the mask, independent otherwise (docs/stability.md).
    masks: str = "auto"
    # "auto": where a layer's tail is affine in its spatial mean and the response is the logit,
    # the response is linear in the mask, so the importance every sampled run converges to is
    # computed exactly from the views' activations, with no perturbed network at all
    # (METHOD.md's exact expectation); other layers are sampled. "sampled": sample every layer.
    # The file records each layer's estimator (settings["estimators"]).
    estimator: str = "auto"
    # Distil until stable: a class stops as soon as its predicted seed agreement
    # (chip_fast.solve.stability, from the per-fold sums alone) reaches this at every sampled
    # layer, checked where each stage of samples ends (stages double up to samples_per_class,
    # the cap; every stage spreads a class's views evenly, so a class stopped there weighs its
    # photos as a full run does). None: every class gets samples_per_class.
    until_stable: float | None = None
    # "view_slopes": at a sampled layer whose tail runs on perturbed activations, each view's
    # mask gradient at its mean-masked activation (one backward pass per view) is a control
    # variate for the way the views' own coefficients differ, a large part of the seed noise
    # there (chip_fast.solve.control; the estimand is unchanged). The default because it
    # reaches a given seed agreement sooner on both families measured, since the batch norms
    # of EfficientNet-Lite are folded and the slopes run in the tails' dtype (docs/stability.md).
    # Layers it cannot serve (exact, head path, tails that read other prefix values) take
    # "none": the plain regression. The file records each layer's choice (settings["controls"]).
    control: str = "view_slopes"

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(what)
        need(isinstance(self.samples_per_class, int) and self.samples_per_class >= 2,
             f"samples_per_class must be an int >= 2, got {self.samples_per_class!r}")
        need(0 < self.p_keep < 1, f"p_keep must be in (0, 1), got {self.p_keep}")
        need(isinstance(self.atlas, int) and not isinstance(self.atlas, bool) and self.atlas >= 0,
             f"atlas must be an int >= 0 (patches per channel), got {self.atlas!r}")
        need(self.baseline in BASELINES,
             f"baseline must be one of {BASELINES}, got {self.baseline!r}")
        need(self.fill in FILLS, f"fill must be one of {FILLS}, got {self.fill!r}")
        need(self.response in RESPONSES, f"response must be one of {RESPONSES}, got {self.response!r}")
        need(self.alpha >= 0, f"alpha must be >= 0, got {self.alpha}")
        need((self.batch_size is None or self.batch_size >= 1) and self.classes_per_unit >= 1
             and self.samples_per_unit >= 1,
             "batch_size, classes_per_unit and samples_per_unit must be >= 1")
        need(isinstance(self.folds, int) and 1 <= self.folds <= self.samples_per_class,
             f"folds must be an int in [1, samples_per_class], got {self.folds!r}")
        views_per_image(self.augment)
        for name in ("tail_dtype", "prefix_dtype"):
            value = getattr(self, name)
            need(value in DTYPES, f"{name} must be one of {DTYPES}, got {value!r}")
        need(self.masks in MASK_DESIGNS,
             f"masks must be one of {MASK_DESIGNS}, got {self.masks!r}")
        if self.masks != "auto":
            rng.check_design(self.masks, self.p_keep)
        need(self.estimator in ESTIMATORS,
             f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        need(self.until_stable is None or (isinstance(self.until_stable, float)
                                           and 0 < self.until_stable < 1),
             f"until_stable must be an agreement between 0 and 1 (e.g. 0.95), got "
             f"{self.until_stable!r}")
        need(self.until_stable is None or self.folds >= 2,
             "until_stable needs folds >= 2: a class's stability is predicted from halves of "
             "its folds")
        need(self.control in CONTROLS,
             f"control must be one of {CONTROLS}, got {self.control!r}")
        need(self.tail_path in TAIL_PATHS,
             f"tail_path must be one of {TAIL_PATHS}, got {self.tail_path!r}")



@dataclass(frozen=True)
class JobOptions:
    """How one run goes: outputs, checkpoints, progress, device and the torchrun time limit.
    Nothing here changes the importance (``max_memory`` chooses batch sizes, which the file
    records in the settings)."""
    out: str | Path | None = None
    checkpoint: str | Path | None = None
    checkpoint_every: float = 300.0
    keep_checkpoint: bool = True
    progress: bool = True
    max_memory: str | int | None = None
    device: str | torch.device | None = None
    timeout: float = 600.0


def resolve_settings(settings: DistillSettings, device: torch.device) -> DistillSettings:
    """``settings`` with "auto"/None made concrete for ``device`` (the file records them); a
    memory budget chooses the batch sizes instead through :func:`plan_memory`."""
    cuda = device.type == "cuda"
    native_cpu = device.type == "cpu" and cpu_has_native_bf16()
    tail_dtype = settings.tail_dtype if settings.tail_dtype != "auto" else (
        "bfloat16" if cuda or native_cpu else "float32")
    prefix_dtype = settings.prefix_dtype if settings.prefix_dtype != "auto" else (
        "bfloat16" if native_cpu else "float32")
    batch_size = settings.batch_size if settings.batch_size is not None else (256 if cuda else 64)
    return dataclasses.replace(settings, tail_dtype=tail_dtype, prefix_dtype=prefix_dtype,
                               batch_size=batch_size)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX): there a tail in
    bfloat16 is faster than in float32 and its weights agree with float32's far inside the
    sampling error (docs/stability.md); elsewhere oneDNN emulates bf16. ``tail_dtype``
    overrides the choice (the file records the one made)."""
    checks = [getattr(torch.cpu, name, None)
              for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(check() for check in checks if check is not None)
    except RuntimeError:   # a torch built without these probes
        return False


def resolve_masks(settings: DistillSettings, nonlinear_sampled: bool) -> DistillSettings:
    """``settings`` with masks="auto" made concrete: the orthogonal foldover design where p_keep
    is 0.5 and some layer is sampled through a tail whose response is not linear in the mask
    (``nonlinear_sampled``), independent masks otherwise."""
    if settings.masks != "auto":
        return settings
    pairs = settings.p_keep == 0.5 and nonlinear_sampled
    return dataclasses.replace(settings, masks="orthogonal" if pairs else "independent")
