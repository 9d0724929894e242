import pytest

from keras_astro.cli import build_parser, main

SUBCOMMANDS = [[], ["reproduce"], ["info"], ["agn"], ["agn", "cv"], ["agn", "ablate"], ["agn", "predict"], ["agn", "simulate"], ["agn", "fetch"]]


@pytest.mark.parametrize("words", SUBCOMMANDS)
def test_every_subcommand_has_help(words, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*words, "--help"])
    assert exit_.value.code == 0
    assert "usage: keras-astro" in capsys.readouterr().out


def test_reproduce_arguments():
    args = build_parser().parse_args(["reproduce", "--quick", "--studies", "agn", "--out", "x"])
    assert args.quick and args.studies == ["agn"] and str(args.out) == "x"


def test_cv_options_map_to_config_fields():
    args = build_parser().parse_args(["agn", "cv", "--out", "x", "--warmup", "1000", "--epochs", "2500", "--missing", "band_median"])
    assert (args.warmup, args.epochs, args.missing, args.preset) == (1000, 2500, "band_median", "B")


def test_cv_requires_out(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["agn", "cv", "--preset", "B"])
    assert exit_.value.code == 2
    assert "--out" in capsys.readouterr().err


def test_bad_preset_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["agn", "cv", "--preset", "Z", "--out", "x"])
    assert "invalid choice" in capsys.readouterr().err


def test_missing_catalogue_is_a_clear_error(tmp_path, capsys):
    code = main(["agn", "predict", str(tmp_path / "none.fits"), "--models", str(tmp_path), "--out", str(tmp_path / "o.csv")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
