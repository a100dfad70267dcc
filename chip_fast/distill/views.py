"""The image views a unit needs, decoded ahead and handed over as one batch for the device.

Decoding runs on a pool of threads while the device works on earlier units. Those threads never
touch CUDA: a CUDA call from another thread while the main thread captures a tail's CUDA graph
would invalidate the capture. So with ``decode_device="cuda"`` the threads only read the files,
and the main thread decodes each unit's JPEGs in one batched nvJPEG call
(``ImageFolderSource.decode_many``). Views made on the host are stacked straight into pinned
memory on CUDA, so their copy to the device is asynchronous; views already on the device (a
TensorSource of CUDA tensors, device decoding) are stacked there and never pinned.

Owns the decoding threads and the batch of views; what a view is (``make_view``) and how a file
is decoded are ``chip_fast.data.sources``'.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch

from ..data.sources import ImageFolderSource, make_view
from ..util.cpus import usable_cpus
from .settings import DistillSettings


def stack_pinned(views: list[torch.Tensor], pin: bool) -> torch.Tensor:
    """``torch.stack(views)``; into pinned memory when ``pin`` and the views are on the host
    (one copy, where stacking and then pinning would make two)."""
    if not pin or views[0].is_cuda:
        return torch.stack(views)
    out = torch.empty((len(views), *views[0].shape), dtype=views[0].dtype, pin_memory=True)
    return torch.stack(views, out=out)


class ViewLoader:
    """Decodes (class, view) pairs ahead (``submit``) and returns them as one batch (``load``)."""

    def __init__(self, source, settings: DistillSettings, device: torch.device) -> None:
        self.source, self.seed, self.device = source, settings.seed, device
        self._pool: ThreadPoolExecutor | None = None
        decode = getattr(source, "decode_device", None)
        self.on_device = (isinstance(source, ImageFolderSource) and decode is not None
                          and torch.device(decode).type == "cuda")

    def view(self, c: int, v: int) -> torch.Tensor:
        n_images = self.source.count(c)
        return make_view(self.source.load(c, v % n_images), c, v, n_images, self.seed)

    def _decoder(self) -> ThreadPoolExecutor:
        # PIL releases the GIL while decoding; as many threads as CPUs this process may use.
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=usable_cpus(),
                                            thread_name_prefix="chip_fast-decode")
        return self._pool

    def submit(self, pairs: list[tuple[int, int]]) -> Future | list[Future]:
        """Start decoding the pairs (on CUDA decoding: reading their files) on the threads."""
        if not pairs:
            return []
        if self.on_device:
            pool = self._decoder()
            return [pool.submit(self.source.read_encoded, c, v % self.source.count(c))
                    for c, v in pairs]
        if len(pairs) > 1 and isinstance(self.source, ImageFolderSource):
            pool = self._decoder()
            return [pool.submit(self.view, c, v) for c, v in pairs]
        done: Future = Future()   # in memory: made on this thread, where CUDA work is safe
        done.set_result(stack_pinned([self.view(c, v) for c, v in pairs],
                                     self.device.type == "cuda"))
        return done

    def load(self, pairs: list[tuple[int, int]], pending=None) -> torch.Tensor:
        """The pairs as one batch, in their order (``pending``: what ``submit`` returned)."""
        pending = self.submit(pairs) if pending is None else pending
        if isinstance(pending, Future):
            return pending.result()
        if self.on_device:
            images = self.source.decode_many(
                [(c, v % self.source.count(c)) for c, v in pairs], [f.result() for f in pending])
            return torch.stack([make_view(im, c, v, self.source.count(c), self.seed)
                                for im, (c, v) in zip(images, pairs)])
        return stack_pinned([f.result() for f in pending], self.device.type == "cuda")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
