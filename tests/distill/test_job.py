"""One distillation in one process (``chip_fast.distill.job.DistillJob``): its streamed sums
equal a naive loop that rebuilds every sample on its own, and it reads a photo folder with the
model's own preprocessing."""
from __future__ import annotations

import pytest
import torch

import chip_fast
from chip_fast import ImageFolderSource, Preprocess, rng
from chip_fast.data.sources import make_view
from chip_fast.distill.job import DistillJob
from chip_fast.distill.settings import DistillSettings
from chip_fast.distill.tails import response_of
from chip_fast.ops.perturb import perturb_reference
from tests.helpers import write_folder


@pytest.mark.parametrize("masks", ["orthogonal", "antithetic", "independent"])
@pytest.mark.parametrize("baseline", ["none", "view"])
def test_any_sample_regenerates_alone(tiny_net, tiny_data, baseline, masks):
    """The batched job's sums equal a naive loop that rebuilds every sample on its own (with
    baseline="view", minus p_keep times the unperturbed response of the sample's view), in
    every mask design (the paired ones: a pair shares its view and fold, the odd sample's mask
    is the complement)."""
    settings = DistillSettings(samples_per_class=20, seed=11, augment=3, samples_per_unit=8,
                               classes_per_unit=2, batch_size=7, fill="noise",
                               baseline=baseline, masks=masks,
                               tail_dtype="float32", prefix_dtype="float32")   # as the reference
    job = DistillJob(tiny_net, tiny_data, ["features.1"], settings, classes=[1, 4])
    job.measure_fill_statistics()
    job.run_pending(job.state.pending())
    images, labels = tiny_data
    n_views = 2 * 3  # 2 images per class x 3 views
    for slot, c in enumerate([1, 4]):
        own = images[labels == c]
        folds = settings.folds
        szy = torch.zeros(folds, job.plan.channels["features.1"], dtype=torch.float64)
        syy = torch.zeros(folds, dtype=torch.float64)
        for i in range(settings.samples_per_class):
            v = int(rng.pair_start(torch.tensor(i), masks)) * n_views // settings.samples_per_class
            fold = int(rng.fold_of(torch.tensor(i), folds, masks))
            x = make_view(own[v % 2], c, v, 2, settings.seed)[None]
            with torch.no_grad():
                a = tiny_net.features[1](tiny_net.features[0](x))
                pert, z = perturb_reference(a, torch.tensor([0]), torch.tensor([c]), torch.tensor([i]),
                                            seed=11, p_keep=0.5, fill="noise",
                                            mu=job.state.mu["features.1"],
                                            sigma=job.state.sigma["features.1"],
                                            design=masks, folds=folds)
                logits = tiny_net.classifier(torch.flatten(tiny_net.pool(tiny_net.features[2](pert)), 1))
            y = response_of(logits, torch.tensor([c]), "logit")
            if baseline == "view":
                with torch.no_grad():
                    y = y - settings.p_keep * response_of(tiny_net(x), torch.tensor([c]),
                                                          "logit")
            szy[fold] += z[0].double() * y.double()
            syy[fold] += y.double()[0] ** 2
        torch.testing.assert_close(job.state.sum_zy["features.1"][slot], szy, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(job.state.sum_yy["features.1"][slot], syy, rtol=1e-5, atol=1e-6)


def test_a_folder_source_is_read_with_the_models_own_preprocessing(tmp_path):
    """A source made without preprocess= takes the distilled model's: EfficientNet-Lite0 reads
    [-1, 1] inputs, never the ImageNet mean/std of another family; a direct read without one is
    refused with what to do."""
    from chip_fast.distill.job import DistillJob
    from chip_fast.models.efficientnet_lite import EfficientNetLite0, lite_preprocess
    root = write_folder(tmp_path / "train")
    src = ImageFolderSource(root)
    with pytest.raises(ValueError, match="no preprocessing to read the photos with"):
        src.load(src.classes[0], 0)
    job = DistillJob(EfficientNetLite0().eval(), src, ["features.8"],
                     chip_fast.DistillSettings(samples_per_class=8))
    assert job.source is src and src.preprocess == lite_preprocess()
    given = ImageFolderSource(root, preprocess=Preprocess(size=32))
    DistillJob(EfficientNetLite0().eval(), given, ["features.8"],
               chip_fast.DistillSettings(samples_per_class=8))
    assert given.preprocess == Preprocess(size=32)    # a preprocessing the user chose stays


def test_the_few_samples_warning_names_sampled_layers_only(tiny_net, tiny_data):
    """An exact layer takes no samples, so few samples are no reason to warn about it."""
    import warnings
    settings = DistillSettings(samples_per_class=2, folds=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DistillJob(tiny_net, tiny_data, ["features.2"], settings)          # exact: affine tail
    with pytest.warns(UserWarning, match=r"under a quarter of the channels of \{'features.1'"):
        DistillJob(tiny_net, tiny_data, ["features.1", "features.2"], settings)
