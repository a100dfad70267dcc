"""The views a unit needs (``chip_fast.distill.views``): with decoding on the GPU the decoding
threads only read files and the main thread decodes a unit's JPEGs in one batched call (a CUDA
call from another thread would invalidate a CUDA graph being captured); files the decoder does
not take fall back to PIL. Checked here with torchvision's decoder on the CPU standing in for
nvJPEG, the same calls."""
from __future__ import annotations

import threading

import numpy as np
import torch
from PIL import Image

import chip_fast
from chip_fast import ImageFolderSource, Preprocess
from chip_fast.data.sources import make_view
from chip_fast.distill.settings import DistillSettings
from chip_fast.distill.views import ViewLoader, stack_pinned
from tests.helpers import write_folder


def device_loader(root, monkeypatch) -> tuple[ViewLoader, list[str]]:
    source = ImageFolderSource(root, preprocess=Preprocess(size=32, resize=36),
                               decode_device="cpu")
    seen: list[str] = []
    read, decode = source.read_encoded, source.decode_many

    def reading(*args):
        seen.append(f"read on {threading.current_thread().name}")
        return read(*args)

    def decoding(*args):
        seen.append(f"decode on {threading.current_thread().name}")
        return decode(*args)
    monkeypatch.setattr(source, "read_encoded", reading)
    monkeypatch.setattr(source, "decode_many", decoding)
    loader = ViewLoader(source, DistillSettings(seed=3), torch.device("cpu"))
    loader.on_device = True   # decode_device="cuda" takes this path; the CPU decoder stands in
    return loader, seen


def test_device_decoding_reads_on_the_threads_and_decodes_on_the_main_thread(tmp_path,
                                                                              monkeypatch):
    root = write_folder(tmp_path / "train", per_class=3, size=40)
    loader, seen = device_loader(root, monkeypatch)
    source = loader.source
    c = source.classes[0]
    pairs = [(c, 0), (c, 1), (c, 4)]       # view 4: a random crop of image 1
    views = loader.load(pairs, loader.submit(pairs))
    loader.close()
    assert all("chip_fast-decode" in s for s in seen if s.startswith("read"))
    assert [s for s in seen if s.startswith("decode")] == ["decode on MainThread"]
    want = torch.stack([make_view(source.load(c, v % 3), c, v, 3, 3) for _, v in pairs])
    torch.testing.assert_close(views, want)


def test_files_the_device_decoder_does_not_take_go_through_pil(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "train", per_class=1, size=40)
    folder = sorted(root.iterdir())[0]
    arr = (np.random.default_rng(1).random((40, 48, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(folder / "z_extra.png")
    loader, seen = device_loader(root, monkeypatch)
    c = loader.source.classes[0]
    assert loader.source.read_encoded(c, 1) is None          # the PNG
    views = loader.load([(c, 0), (c, 1)])
    png = Preprocess(size=32, resize=36)(Image.open(folder / "z_extra.png"))
    torch.testing.assert_close(views[1], png)


def test_a_job_reads_a_folder_decoded_by_torchvision(tmp_path):
    """decode_device end to end (the CPU decoder here; the GPU check runs nvJPEG)."""
    root = write_folder(tmp_path / "train", per_class=2, size=40)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 1000)).eval()
    source = ImageFolderSource(root, decode_device="cpu")
    imp = chip_fast.distill_all_classes(model, source, ["1"], samples_per_class=16,
                                        progress=False)
    assert torch.isfinite(imp.r["1"]).all()


def test_views_are_stacked_without_pinning_off_cuda():
    views = [torch.randn(3, 4, 4) for _ in range(3)]
    out = stack_pinned(views, pin=False)
    assert torch.equal(out, torch.stack(views)) and not out.is_pinned()
