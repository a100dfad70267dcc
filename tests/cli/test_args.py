"""What every subcommand shares (``chip_fast.cli.args``): class lists and ranges parsed or
refused with the reason, and every help showing its defaults."""
from __future__ import annotations

import pytest

from chip_fast.cli import main
from chip_fast.cli.args import parse_classes


def test_class_ranges():
    assert parse_classes("0-3,7,9-10") == [0, 1, 2, 3, 7, 9, 10]
    assert parse_classes("3,1-3") == [3, 1, 2]      # once each, in the order given
    assert parse_classes(None) is None
    # distill's list also takes the data's wnids and names, which the data resolves
    assert parse_classes("0-1,n01440764,black-and-tan coonhound,0", names=True) == [
        0, 1, "n01440764", "black-and-tan coonhound"]
    import argparse
    for text, why in (("5-2", "a range goes up, e.g. 2-5"), ("-3", "0 or more"),
                      ("1,x", "'x': use class indices and ranges")):
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            parse_classes(text)


def test_every_help_shows_its_defaults(capsys):
    for command, shown in (("distill", "(default: 8192)"), ("explain", "(default: chip-overlays)"),
                           ("evaluate", "(default: out/evaluate)"), ("demo", "(default: chip-demo)")):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert shown in text and "(default: None)" not in text, command


def test_a_device_this_machine_lacks_is_named_not_a_torch_traceback():
    import argparse
    import torch
    from chip_fast.cli.args import device_of
    with pytest.raises(ValueError, match="'gpu7' is not a device name: use cpu, cuda or cuda:N"):
        device_of(argparse.Namespace(device="gpu7"))
    assert device_of(argparse.Namespace(device="cpu")) == torch.device("cpu")
    gpus = torch.cuda.device_count()
    if gpus == 0:
        with pytest.raises(ValueError, match="torch sees no CUDA device here"):
            device_of(argparse.Namespace(device="cuda:1"))
    else:
        with pytest.raises(ValueError, match=f"cuda:0 to cuda:{gpus - 1}"):
            device_of(argparse.Namespace(device=f"cuda:{gpus}"))


def test_empty_lists_are_refused_not_read_as_the_defaults():
    import argparse
    from chip_fast.cli.args import parse_layers
    for text in ("", " ", ","):
        with pytest.raises(argparse.ArgumentTypeError, match="empty class list"):
            parse_classes(text)
        with pytest.raises(ValueError, match="--layers is empty"):
            parse_layers(text)
    assert parse_layers(None) is None and parse_layers("a, b") == ["a", "b"]


def test_a_file_system_error_says_what_was_in_the_way(tmp_path, capsys):
    """A file where the output folder must go, a missing mapping file, a file given as the data
    folder: one line naming the path and what it means, exit code 2."""
    from tests.helpers import cli_error
    (tmp_path / "afile").write_text("x")
    err = cli_error(["distill", "--arch", "no_such_net", "--data", str(tmp_path / "afile"),
                     "--out", str(tmp_path / "x.chip")], capsys)
    assert "afile is a file: give the folder of class folders" in err
    from chip_fast.cli import _os_message
    e = FileExistsError(17, "File exists", str(tmp_path / "afile"))
    assert _os_message(e) == (f"{tmp_path / 'afile'}: a file is in the way of a folder the "
                              "command creates (File exists)")
    assert _os_message(FileNotFoundError("image folder x does not exist")) == \
        "image folder x does not exist"     # our own sentences stay as they are


def test_warnings_print_on_their_own_line_and_the_display_is_restored(capsys):
    """The CLI shows a warning as one line through tqdm.write (above a live bar); after main
    the process's own warning display is back, and a caller that records warnings keeps
    recording them."""
    import warnings
    from chip_fast import cli
    cli._show_warning("look", UserWarning, "f.py", 1)
    assert capsys.readouterr().err == "chip-fast: UserWarning: look\n"
    before = warnings.showwarning
    assert main(["distill", "--arch", "no_such_net", "--data", "/nonexistent", "--out",
                 "/tmp/x.chip"]) == 2
    assert warnings.showwarning is before
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        recorder = warnings.showwarning
        main(["distill", "--arch", "no_such_net", "--data", "/nonexistent", "--out",
              "/tmp/x.chip"])
        assert warnings.showwarning is recorder
