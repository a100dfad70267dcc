"""``chip-fast distill``: distil the channel importance of every class into a file."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..distill.settings import CONTROLS, MASK_DESIGNS, DistillSettings
from .args import (add_command, add_model_args, device_of, model_of, parse_classes,
                   parse_layers, seconds)


def configure(sub) -> None:
    d = add_command(sub, "distill", "distil channel importance of every class into a file")
    add_model_args(d)
    d.add_argument("--data", help="image folder in the train/<wnid>/*.JPEG layout (default: "
                                  "the folder in the environment variable CHIP_FAST_TRAIN_DIR)")
    d.add_argument("--mapping-file", help="LOC_synset_mapping.txt-style class order "
                                          "(default: ImageNet order for wnid folders)")
    d.add_argument("--layers", help="comma-separated module names (default: picked per model)")
    d.add_argument("--classes", type=lambda text: parse_classes(text, names=True),
                   help="classes to distil: indices and ranges, or the data's wnids or class "
                        "names, e.g. 0-99,150 or n01440764,tench (default: all with images)")
    d.add_argument("--samples-per-class", type=int, default=DistillSettings.samples_per_class,
                   help="perturbed networks per class (with --until-stable: the most a class "
                        "may get)")
    d.add_argument("--until-stable", type=float, metavar="R",
                   help="distil until stable: stop each class once the agreement its sums "
                        "predict with another seed's weights reaches R (e.g. 0.95) at every "
                        "sampled layer, checked as the samples double up to "
                        "--samples-per-class")
    d.add_argument("--seed", type=int, default=0,
                   help="seed of every mask, noise value and crop (same seed, same file)")
    d.add_argument("--p-keep", type=float, default=DistillSettings.p_keep,
                   help="probability that a perturbation keeps a channel")
    d.add_argument("--fill", choices=["noise", "zero", "mean"], default=DistillSettings.fill,
                   help="what replaces a disabled channel")
    d.add_argument("--response", choices=["logit", "softmax", "log_softmax"],
                   default=DistillSettings.response,
                   help="the class output that is regressed on the masks")
    d.add_argument("--baseline", choices=["none", "view"], default=DistillSettings.baseline,
                   help="view: regress each response minus p_keep x its view's unperturbed "
                        "response (removes the photo-to-photo spread the masks cannot explain); "
                        "none: the raw response")
    d.add_argument("--masks", choices=list(MASK_DESIGNS), default=DistillSettings.masks,
                   help="orthogonal: complementary pairs from a randomised Hadamard design "
                        "(p_keep 0.5), antithetic: complementary pairs of independent masks "
                        "(p_keep 0.5), independent: every mask its own draw; auto: orthogonal "
                        "where p_keep is 0.5 and a sampled layer's response is not linear")
    d.add_argument("--estimator", choices=["auto", "sampled"], default=DistillSettings.estimator,
                   help="auto: the exact importance where a layer's tail is affine and the "
                        "response is the logit (no sampling there); sampled: sample every layer")
    d.add_argument("--control", choices=list(CONTROLS), default=DistillSettings.control,
                   help="view_slopes: each view's mask gradient (one backward pass per view) as "
                        "a control variate at layers sampled through their tail (the same "
                        "importance, less seed noise for a little more time: docs/stability.md); "
                        "none: the plain regression")
    d.add_argument("--alpha", type=float, default=DistillSettings.alpha,
                   help="penalty as a fraction of lambda_max")
    d.add_argument("--nonneg", action="store_true", help="keep only non-negative weights")
    d.add_argument("--augment", type=int, default=1,
                   help="views per image: 1 = none, 2 = with mirror, more = random crops too")
    d.add_argument("--batch-size", type=int, help="perturbed samples per forward (default: 64 "
                                                  "on CPU, 256 on GPU, or from --max-memory)")
    d.add_argument("--tail-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="dtype of the perturbed networks' tails (default auto: bfloat16 on GPUs "
                        "and on CPUs with native bf16, float32 elsewhere; recorded in the file)")
    d.add_argument("--prefix-dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="dtype of the prefix that makes the layers' activations (default auto: "
                        "bfloat16 on CPUs with native bf16, float32 elsewhere; recorded)")
    d.add_argument("--atlas", type=int, default=0, metavar="K",
                   help="keep the channel atlas in the file: each channel's K strongest "
                        "distillation patches, for 'chip-fast atlas' (0: none)")
    _run_options(d)
    d.set_defaults(func=run)


def _run_options(d: argparse.ArgumentParser) -> None:
    d.add_argument("--checkpoint", help="checkpoint folder, saved every --checkpoint-every "
                                        "seconds and on Ctrl-C / SIGTERM; rerunning the same "
                                        "command resumes from it (default: OUT.ckpt next to "
                                        "--out; removed once OUT is written, unless "
                                        "--keep-checkpoint)")
    d.add_argument("--keep-checkpoint", action="store_true",
                   help="keep the checkpoint folder after success")
    d.add_argument("--checkpoint-every", type=seconds, default=300.0, metavar="S",
                   help="seconds between checkpoints (0: after every unit of work)")
    d.add_argument("--max-memory", metavar="SIZE",
                   help="memory budget per process, e.g. 8GiB: chooses the batch size and the "
                        "samples per unit (recorded in the output; do not give --batch-size)")
    d.add_argument("--dist-timeout", type=seconds, default=600.0, metavar="S",
                   help="under torchrun: seconds a collective or a silent rank may take before "
                        "the job fails")
    d.add_argument("--on-error", choices=["skip", "raise"], default="skip",
                   help="an image that cannot be decoded: name it and go on, or stop")
    d.add_argument("--decode-device", help="decode JPEGs with torchvision on this device "
                                           "(cuda: nvJPEG; default: PIL on CPU threads)")
    d.add_argument("--out", required=True,
                   help="importance file to write; locked while the run lasts (OUT.lock), so "
                        "a second run writing it fails at once")


def default_checkpoint(out: Path) -> Path:
    """Where distill checkpoints when --checkpoint is not given: ``<out>.ckpt`` next to it."""
    return out.with_name(out.name + ".ckpt")


def run(args: argparse.Namespace) -> int:
    from ..data.sources import as_source
    from ..distill.checkpoint import CHECKPOINT_GLOB
    from ..distill.distributed import world_from_env
    from ..distill.run import distill_all_classes, output_locks
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; name the importance file to write")
    checkpoint = Path(args.checkpoint) if args.checkpoint else default_checkpoint(out)
    # Locked before the data folder is read (minutes for a whole ImageNet train/), so a second
    # run on the same output fails at once; distill_all_classes takes the same locks (nested).
    # The folder is read before the model loads, so a wrong --data fails first; the job gives it
    # the model's preprocessing.
    with output_locks(world_from_env(), out, checkpoint):
        data = as_source(args.data, mapping_file=args.mapping_file, on_error=args.on_error,
                         decode_device=args.decode_device)
        # The model loads on the CPU: under torchrun each rank then picks its own device
        # (cuda:LOCAL_RANK), so no rank opens a context on GPU 0.
        model = model_of(args, "cpu")
        try:
            distill_all_classes(
                model, data, out=out, checkpoint=checkpoint, keep_checkpoint=args.keep_checkpoint,
                device=device_of(args), max_memory=args.max_memory,
                timeout=args.dist_timeout, checkpoint_every=args.checkpoint_every,
                layers=parse_layers(args.layers), classes=args.classes,
                samples_per_class=args.samples_per_class, seed=args.seed, p_keep=args.p_keep,
                fill=args.fill, atlas=args.atlas, baseline=args.baseline, masks=args.masks,
                estimator=args.estimator, until_stable=args.until_stable,
                control=args.control, response=args.response, alpha=args.alpha, nonneg=args.nonneg,
                augment=args.augment, batch_size=args.batch_size, tail_dtype=args.tail_dtype,
                prefix_dtype=args.prefix_dtype)
        except (KeyboardInterrupt, SystemExit):
            if any(checkpoint.glob(CHECKPOINT_GLOB)):
                print(f"chip-fast distill: stopped; the work done is saved in {checkpoint}: run "
                      "the same command again to resume", file=sys.stderr, flush=True)
            raise
    return 0
