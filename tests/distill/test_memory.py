"""A memory budget (``chip_fast.distill.memory``): sizes parsed, the batch size and samples per
unit that fit it, and ``max_memory`` turned into the settings a file records."""
from __future__ import annotations

import pytest

from chip_fast.distill.memory import MemoryPlan, parse_bytes, plan_memory
from chip_fast.distill.run import distill_all_classes
from tests.distill.distributed_worker import LAYERS, SETTINGS, make_data, make_model, read


def test_memory_budget_maps_to_settings(tmp_path):
    assert parse_bytes("4GiB") == 4 * 2**30
    assert parse_bytes("512 MiB") == 512 * 2**20
    assert parse_bytes("2GB") == 2 * 10**9
    with pytest.raises(ValueError, match="cannot read memory size"):
        parse_bytes("lots")
    model = make_model()
    small = plan_memory(model, (3, 12, 12), LAYERS, "2MiB", classes_per_unit=2,
                        samples_per_class=48)
    assert small == plan_memory(make_model(), (3, 12, 12), LAYERS, 2 * 2**20,
                                classes_per_unit=2, samples_per_class=48)
    assert isinstance(small, MemoryPlan) and small.batch_size >= 1
    big = plan_memory(model, (3, 12, 12), LAYERS, "64GiB", classes_per_unit=2,
                      samples_per_class=48)
    assert (big.batch_size, big.samples_per_unit) == (1024, 64)
    assert small.batch_size < big.batch_size
    with pytest.raises(ValueError, match="too small"):
        plan_memory(model, (3, 12, 12), LAYERS, "10KiB")
    settings = {k: v for k, v in SETTINGS.items() if k not in ("batch_size", "samples_per_unit")}
    out = tmp_path / "imp.safetensors"
    with pytest.raises(ValueError, match="not both"):
        distill_all_classes(model, make_data(), LAYERS, out=out, max_memory="2MiB",
                            progress=False, **SETTINGS)
    imp = distill_all_classes(model, make_data(), LAYERS, out=out, max_memory="2MiB",
                              progress=False, **settings)
    assert imp.settings["max_memory"] == "2MiB"
    assert imp.settings["batch_size"] == small.batch_size
    assert imp.settings["samples_per_unit"] == small.samples_per_unit
    assert read(out)[1]["settings"]["max_memory"] == "2MiB"
