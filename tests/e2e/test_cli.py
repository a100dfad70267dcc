"""The command line, end to end on the real MobileNetV2 (skipped without ../shared/data), and
``chip-fast distill``'s bad input refused in one line before a model loads."""
from chip_fast.cli import main
from tests.helpers import WEIGHTS, cli_error, write_folder


def test_distill_then_explain(mobilenet_v2, sample_train, tmp_path, capsys):
    out = tmp_path / "mnv2.chip"
    rc = main(["distill", "--arch", "mobilenet_v2", "--weights", str(WEIGHTS), "--data",
               str(sample_train), "--layers", "features.13", "--classes", "281,285",
               "--samples-per-class", "32", "--seed", "1", "--out", str(out), "--device", "cpu"])
    assert rc == 0 and out.is_file()
    photo = sample_train / "n02123045" / "n02123045_sample.JPEG"  # tabby cat, class 281
    rc = main(["explain", "--arch", "mobilenet_v2", "--weights", str(WEIGHTS), "--importance",
               str(out), "--images", str(photo), "--classes", "281,285", "--out",
               str(tmp_path / "overlays"), "--device", "cpu"])
    assert rc == 0
    pngs = sorted(p.name for p in (tmp_path / "overlays").glob("*.png"))
    assert pngs == ["n02123045_sample_class281.png", "n02123045_sample_class285.png"]
    # classes by wnid or name, as distill takes them, resolved by the file's class table
    rc = main(["explain", "--arch", "mobilenet_v2", "--weights", str(WEIGHTS), "--importance",
               str(out), "--images", str(photo), "--classes", "tabby,n02124075", "--out",
               str(tmp_path / "named"), "--device", "cpu"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "named").glob("*.png")) == pngs
    capsys.readouterr()
    err = cli_error(["explain", "--arch", "mobilenet_v2", "--weights", str(WEIGHTS),
                     "--importance", str(out), "--images", str(photo), "--max-side", "-5",
                     "--out", str(tmp_path / "o2")], capsys)
    assert "--max-side -5" in err
    err = cli_error(["explain", "--arch", "mobilenet_v2", "--weights", str(WEIGHTS),
                     "--importance", str(out), "--images", str(photo), "--refine-power", "-1",
                     "--out", str(tmp_path / "o3")], capsys)
    assert "refine_power=-1" in err


def test_errors_are_reported_not_raised(mobilenet_v2, sample_train, tmp_path, capsys):
    rc = main(["distill", "--arch", "mobilenet_v2", "--weights", str(WEIGHTS), "--data",
               str(sample_train), "--layers", "features.99", "--out", str(tmp_path / "x.chip"),
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "no layer 'features.99'" in err and "features.18" in err
    rc = main(["distill", "--arch", "no_such_net", "--data", str(sample_train),
               "--out", str(tmp_path / "x.chip")])
    assert rc == 2 and "unknown --arch" in capsys.readouterr().err


def test_distill_bad_input_is_one_line(tmp_path, capsys):
    """Each is refused before a model loads (the --arch here does not even exist)."""
    base = ["distill", "--arch", "no_such_net", "--out", str(tmp_path / "x.chip")]
    assert "argument --classes: bad class list '5-2': a range goes up" in \
        cli_error(base + ["--classes", "5-2"], capsys)
    assert "bad class list '-3': class indices are 0 or more" in \
        cli_error(base + ["--classes", "-3"], capsys)
    assert "image folder " in cli_error(base + ["--data", str(tmp_path / "nowhere")], capsys)
    (tmp_path / "empty").mkdir()
    assert "has no class folders" in cli_error(base + ["--data", str(tmp_path / "empty")],
                                               capsys)
    train = write_folder(tmp_path / "train")
    assert "unknown --arch 'no_such_net'" in cli_error(base + ["--data", str(train)], capsys)
    assert "is a folder; name the importance file" in \
        cli_error(["distill", "--arch", "x", "--data", str(train), "--out", str(train)], capsys)
    assert not (tmp_path / "x.chip").exists() and not (tmp_path / "x.chip.ckpt").exists()


