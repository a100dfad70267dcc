"""The importance file's integrity check (``chip_fast.importance.file``): a file changed after it
was written (flipped bytes, a negated weight row, a hand-edited class name) is refused naming what
differs; a file of the format before the digests loads with a warning. The files are edited at the
byte level here, through the safetensors layout (8-byte header length, JSON header, data), not
through chip_fast."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import chip_fast
from chip_fast import ImportanceFileError
from chip_fast.importance.file import UnverifiedFileWarning

LAYER = "features.2"


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[chip_fast.Importance, Path]:
    from tests.helpers import TinyNet
    torch.manual_seed(0)
    net = TinyNet(width=16).eval()          # 32 channels at features.2: the gram is 8 KiB
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(12, 3, 16, 16, generator=g), torch.arange(12) % 6)
    imp = chip_fast.distill_all_classes(net, data, [LAYER], samples_per_class=64, progress=False,
                                        fill="noise")   # every tensor group is in the file
    imp.class_names = [f"class {c}" for c in range(imp.num_classes)]
    return imp, imp.save(tmp_path_factory.mktemp("imp") / "tiny.chip")


def read_header(raw: bytes) -> tuple[dict, int]:
    """The safetensors JSON header and where the data starts."""
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), 8 + n


def tensor_bytes(raw: bytes, name: str) -> slice:
    header, start = read_header(raw)
    lo, hi = header[name]["data_offsets"]
    return slice(start + lo, start + hi)


def with_header(raw: bytes, header: dict) -> bytes:
    """``raw`` with its header replaced (padded to 8 bytes as safetensors writes it)."""
    _, start = read_header(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[start:]


def refusal(tmp_path: Path, raw: bytes) -> str:
    """The message with which load_importance refuses ``raw`` (written to a file)."""
    bad = tmp_path / "edited.chip"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ImportanceFileError) as refused:
        chip_fast.load_importance(bad)
    return str(refused.value)


def test_untouched_file_loads_silently_and_equal(saved):
    imp, path = saved
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = chip_fast.load_importance(path)
    assert back.class_names == imp.class_names and back.classes == imp.classes
    for name in ("weights", "gram", "r", "sum_zy", "sum_y", "sum_yy", "fill_mean", "fill_std"):
        for layer, t in getattr(imp, name).items():
            assert torch.equal(getattr(back, name)[layer], t.to(getattr(back, name)[layer].dtype))


def test_flipped_bytes_in_the_gram_are_refused_naming_the_tensor(saved, tmp_path):
    _, path = saved
    raw = bytearray(path.read_bytes())
    span = tensor_bytes(raw, f"gram/{LAYER}")
    assert span.stop - span.start == 32 * 32 * 8
    lo = span.start + 1024
    raw[lo:lo + 4096] = bytes(b ^ 0xFF for b in raw[lo:lo + 4096])
    assert re.search(rf"integrity check: tensor\(s\) gram/{LAYER} do not match",
                     refusal(tmp_path, raw))


def test_negated_weight_row_is_refused(saved, tmp_path):
    imp, path = saved
    raw = bytearray(path.read_bytes())
    span = tensor_bytes(raw, f"weights/{LAYER}")
    w = np.frombuffer(bytes(raw[span]), dtype="<f4").reshape(imp.num_classes, -1).copy()
    assert np.abs(w[3]).sum() > 0
    w[3] = -w[3]
    raw[span] = w.tobytes()
    assert re.search(rf"integrity check: tensor\(s\) weights/{LAYER} do not match",
                     refusal(tmp_path, raw))


def test_hand_edited_class_name_is_refused_naming_the_metadata(saved, tmp_path):
    _, path = saved
    raw = path.read_bytes()
    header, _ = read_header(raw)
    meta = json.loads(header["__metadata__"]["chip_fast"])
    meta["class_names"][2] = "golden retriever"
    header["__metadata__"]["chip_fast"] = json.dumps(meta)
    message = refusal(tmp_path, with_header(raw, header))
    assert re.search("integrity check: the metadata .*does not match its digest", message)
    assert "do not match their digests" not in message      # no tensor was touched
    # the header rewrite itself is sound: the same edit with its digest made good loads
    from chip_fast.importance.file import metadata_digest
    meta["integrity"]["metadata"] = metadata_digest(meta)
    header["__metadata__"]["chip_fast"] = json.dumps(meta)
    bad = tmp_path / "renamed.chip"
    bad.write_bytes(with_header(raw, header))
    assert chip_fast.load_importance(bad).class_names[2] == "golden retriever"


def test_removed_digests_and_added_tensors_are_refused(saved, tmp_path):
    _, path = saved
    raw = path.read_bytes()
    header, _ = read_header(raw)
    meta = json.loads(header["__metadata__"]["chip_fast"])
    del meta["integrity"]
    stripped = dict(header, __metadata__={"chip_fast": json.dumps(meta)})
    assert "no 'integrity' digests" in refusal(tmp_path, with_header(raw, stripped))
    renamed = {("weights/extra" if k == f"fill_std/{LAYER}" else k): v for k, v in header.items()}
    assert re.search(rf"fill_std/{LAYER} are missing.*weights/extra were added",
                     refusal(tmp_path, with_header(raw, renamed)))


def test_old_format_file_loads_with_a_warning(saved, tmp_path):
    """A version-1 file, as chip_fast wrote it before the digests: tensors and one metadata
    entry."""
    from safetensors.torch import save_file
    from chip_fast.importance.file import tensors_of
    imp, _ = saved
    meta = imp.metadata()
    meta["version"] = 1
    old = tmp_path / "old.chip"
    save_file(tensors_of(imp), old, metadata={"chip_fast": json.dumps(meta)})
    with pytest.warns(UnverifiedFileWarning, match="before importance files carried integrity"):
        back = chip_fast.load_importance(old)
    assert torch.equal(back.weights[LAYER], imp.weights[LAYER])
    # saved again, it carries digests and loads silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chip_fast.load_importance(back.save(tmp_path / "new.chip"))
