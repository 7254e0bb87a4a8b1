"""Configuration: validation, presets and precedence (flag > file > preset > default)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from floranet import config
from floranet.errors import ConfigError
from floranet.utils.files import atomic_path


def test_precedence_flag_over_file_over_preset(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"epochs": 7, "batch-size": 16, "preset": "tutorial", "dropout": 0.1}))
    cfg = config.resolve(file=path, epochs=9, batch_size=None)
    assert cfg.epochs == 9  # flag beats file
    assert cfg.batch_size == 16  # file beats default (flag not given)
    assert cfg.dropout == 0.1  # file beats preset
    assert cfg.fine_tune_epochs == 0 and cfg.learning_rate == 1e-3  # from the tutorial preset
    assert config.resolve().preset == "recommended" and config.resolve().fine_tune_epochs > 0
    assert config.resolve(preset="tutorial", file=path).preset == "tutorial"


def test_saved_yaml_round_trips(tmp_path) -> None:
    cfg = config.resolve(preset="tutorial", image_size=(160, 200), weights="none")
    cfg.save(tmp_path / "config.yaml")
    again = config.resolve(file=tmp_path / "config.yaml")
    assert again == cfg and again.weights is None and again.image_size == (160, 200)


@pytest.mark.parametrize(
    "flags, match",
    [
        ({"image_size": -3}, "Received: image_size=-3"),
        ({"batch_size": 0}, "Received: batch_size=0"),
        ({"val_split": 1.5}, "Received: val_split=1.5"),
        ({"precision": "fp16"}, "Received: precision='fp16'"),
        ({"augment": "sometimes"}, "Received: augment='sometimes'"),
        ({"preset": "fast"}, "Received: preset='fast'"),
        ({"epochs": 0, "fine_tune_epochs": 0}, "epochs"),
        ({"learning_rate": 3.0}, "Received: learning_rate=3.0"),
        ({"seed": -1}, "Received: seed=-1"),
        ({"seed": 2**32}, "Received: seed=4294967296"),
        ({"weights": 5}, "Received: weights=5"),
        ({"weights": ""}, "weights must be 'imagenet', 'none' or a weights file path. Received: weights=''"),
        ({"file": ""}, "file must be a YAML file path. Received: file=''"),
        ({"split_file": 7}, "Received: split_file=7"),
        ({"head_units": 10**8}, "head_units must be at most 65,536. Received: head_units=100000000"),  # OOM before
    ],
)
def test_invalid_values_name_the_setting(flags, match) -> None:
    with pytest.raises(ConfigError, match=match):
        config.resolve(**flags)


def test_unknown_keys_and_bad_files(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    with pytest.raises(ConfigError, match="Unknown settings in .*epochz"):
        config.resolve(file=bad)
    bad.write_text("[1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.resolve(file=bad)
    with pytest.raises(ConfigError, match=f"^Config file {re.escape(str(tmp_path / 'missing.yaml'))} not found"):
        config.resolve(file=tmp_path / "missing.yaml")  # the file, not an argument of another name (config=)
    bad.write_text("epochs: 3\nhead_units: 64\n")
    assert config.resolve(file=bad).epochs == 3


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("epochs: 3\nepochs: 4\n", r"'epochs' is set twice \(lines 1 and 2\) \(line 2, column 1\)"),
        ("fine-tune-epochs: 1\nfine_tune_epochs: 2\n", "'fine_tune_epochs' is set twice"),
        ("[1, 2\n", r"expected ',' or '\]', but got '<stream end>' \(line 2, column 1\)$"),
        ("epochs: !!python/object:os.system ls\n", "could not determine a constructor"),
        # A billion laughs: 479 bytes of aliases expanded to 10**9 strings while the error echoed them.
        (
            'exclude:\n  - &a0 ["lol","lol","lol"]\n'
            + "".join(f"  - &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 9)),
            r"aliases \(\*name\) are not accepted here \(line 3, column 10\)",
        ),
        ("? [a, b]\n: 1\n", r"a key must be a name, not a list or a mapping \(line 1, column 3\)"),
        ("<<: {epochs: 2}\nepochs: 3\n", "'epochs' is set twice"),
        ("epochs: 3\n<<: {epochs: 2}\n", r"'epochs' is set twice \(lines 1 and 2\)"),  # said "first on line 2"
    ],
)
def test_yaml_errors_are_one_line_and_refuse_a_key_given_twice(tmp_path, text, match) -> None:
    """A second ``epochs:`` would silently win in plain YAML; PyYAML's own message spans several lines."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=match) as caught:
        config.resolve(file=bad)
    assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="Unknown settings: speed"):
        config.resolve(speed=3)


def test_huge_values_are_refused_and_echoed_short() -> None:
    for key, value in (("batch_size", 10**20), ("epochs", 10**22), ("head_units", 2**31), ("image_size", 10**8)):
        with pytest.raises(ConfigError, match=f"{key} must be") as e:
            config.resolve(**{key: value})
        assert len(str(e.value)) < 300
    with pytest.raises(ConfigError, match=r"Received: exclude=\[\[\[\[...\]\]\]\]") as e:
        config.resolve(exclude=[[[["deep"] * 1000]]])
    assert len(str(e.value)) < 300


def test_a_float_in_exponent_form_is_a_number_in_a_config_file(tmp_path) -> None:
    """PyYAML reads ``1e-4`` as a string (YAML 1.1 floats need a dot): it was refused as learning_rate='1e-4'."""
    f = tmp_path / "c.yaml"
    f.write_text("learning_rate: 1e-4\nfine-tune-learning-rate: 5E-6\nlabel_smoothing: .1\nepochs: 3\n")
    cfg = config.resolve(file=f)
    assert (cfg.learning_rate, cfg.fine_tune_learning_rate, cfg.label_smoothing) == (1e-4, 5e-6, 0.1)
    f.write_text("learning_rate: fast\n")  # still a string: named as before
    with pytest.raises(ConfigError, match="Received: learning_rate='fast' .in the config file .*c.yaml"):
        config.resolve(file=f)


def test_numpy_numbers_and_paths_from_python_become_plain_values(tmp_path, monkeypatch) -> None:
    """np.int64(1) epochs passed every check, then config.yaml could not be written (a RepresenterError, after the
    run folder was made); backbone=5 passed until after the data was read."""
    import numpy as np
    import yaml

    monkeypatch.chdir(tmp_path)
    cfg = config.resolve(
        data_dir=Path("data"), out=Path("run"), epochs=np.int64(2), val_split=np.float64(0.3), audit=np.bool_(False)
    )
    assert (cfg.data_dir, cfg.out) == (str(tmp_path / "data"), "run")
    assert (type(cfg.epochs), type(cfg.val_split), cfg.audit) == (int, float, False)
    assert yaml.safe_load(cfg.to_yaml())["epochs"] == 2
    for name, value in (("backbone", 5), ("data_dir", 123), ("split_file", 1.5)):
        with pytest.raises(ConfigError, match=f"{name} must be text .a path or a name.. Received: {name}={value}"):
            config.resolve(**{name: value})
    from floranet.workflows import train

    with pytest.raises(ConfigError, match="data_dir is required"):  # it trained on the current folder
        train(config.resolve(out=str(tmp_path / "r")), progress=False, say=lambda m: None)
    assert not (tmp_path / "r").exists()


def test_data_dir_is_recorded_absolute(tmp_path, monkeypatch) -> None:
    """A run's evaluate, audit, export and report find its images from any folder, not only where it was trained."""
    monkeypatch.chdir(tmp_path)
    assert config.resolve(data_dir="data").data_dir == str(tmp_path / "data")
    assert config.resolve(data_dir="a/../b").data_dir == str(tmp_path / "b")
    assert config.resolve().data_dir == ""  # not given: stays unset
    given = config.resolve(data_dir="d", split_file="s.csv", exclude="../x.txt", relabel="r.csv")
    assert (given.split_file, given.exclude, given.relabel) == tuple(
        str(p) for p in (tmp_path / "s.csv", tmp_path.parent / "x.txt", tmp_path / "r.csv")
    )  # --resume from another folder compares the same files (relative ones differed there)
    assert config.resolve(data_dir="d", weights="w/backbone.h5").weights == str(tmp_path / "w" / "backbone.h5")
    assert config.resolve(data_dir="d", weights="imagenet").weights == "imagenet"
    assert config.resolve(data_dir="d", weights="none").weights is None


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path) -> None:
    target = tmp_path / "model.keras"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-save")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


def test_every_training_setting_has_a_flag_and_flags_win_over_the_file(tmp_path) -> None:
    from floranet.cli import build_parser
    from floranet.cli.training import TRAIN_KEYS

    assert set(config.FIELDS) - set(TRAIN_KEYS) == {"data_dir", "out"}  # the positional and --out
    file = tmp_path / "c.yaml"
    file.write_text("audit: false\nlabel_smoothing: 0.2\nmax_pixels: 1000\n")
    argv = ["train", "d", "--out", "o", "--config", str(file), "--audit", "--label-smoothing", "0.05"]
    args = build_parser().parse_args([*argv, "--early-stopping-patience", "3", "--class-weights", "auto"])
    cfg = config.resolve(file=args.config, data_dir="d", out="o", **{k: getattr(args, k) for k in TRAIN_KEYS})
    assert (cfg.audit, cfg.label_smoothing, cfg.max_pixels, cfg.early_stopping_patience) == (True, 0.05, 1000, 3)
    assert cfg.class_weights == "auto"


def test_class_weights_none_flag_unsets_the_files_auto(tmp_path) -> None:
    """`class_weights: auto` in a --config file could not be turned off by a flag (`--class-weights none`: invalid
    choice), though flags win over the file; `--weights none` could."""
    from floranet.cli import build_parser
    from floranet.cli.training import TRAIN_KEYS

    file = tmp_path / "c.yaml"
    file.write_text("class_weights: auto\n")
    args = build_parser().parse_args(["train", "d", "--out", "o", "--config", str(file), "--class-weights", "none"])
    cfg = config.resolve(file=args.config, data_dir="d", out="o", **{k: getattr(args, k) for k in TRAIN_KEYS})
    assert cfg.class_weights is None and config.resolve(file=file, data_dir="d", out="o").class_weights == "auto"


def test_an_unknown_option_is_said_by_its_commands_parser(capsys) -> None:
    """`floranet report RUN --output x.html` printed the top-level usage and "floranet: error", unlike every other
    argument error of a command; and the demo alone took no HxW image size."""
    from floranet.cli import build_parser, main

    with pytest.raises(SystemExit) as stopped:
        main(["report", "runs/x", "--output", "x.html"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "floranet report: error: unrecognized arguments: --output x.html" in err
    assert err.startswith("usage: floranet report ")
    assert build_parser().parse_args(["demo", "--image-size", "180x240"]).image_size == (180, 240)
    # audit DATA_DIR takes the head's and the decoder's settings as train does (its heads are train's)
    flags = [
        "--max-pixels",
        "5",
        "--head-units",
        "16",
        "--dropout",
        "0.1",
        "--label-smoothing",
        "0",
        "--learning-rate",
        "1",
    ]
    args = build_parser().parse_args(["audit", "d", *flags])
    assert (args.max_pixels, args.head_units, args.dropout, args.label_smoothing, args.learning_rate) == (
        5,
        16,
        0.1,
        0,
        1,
    )
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "height x width" in " ".join(capsys.readouterr().out.split())


def test_none_flags_unset_a_config_files_split_lists_and_cluster(tmp_path, monkeypatch) -> None:
    """A run's config.yaml reused for a new run carries its split_file, exclude, relabel and workers, and no flag
    could unset them: `--split-file none` read the file ./none ("cannot be read"), and '' was refused as empty."""
    from floranet.cli import build_parser
    from floranet.cli.training import TRAIN_KEYS

    monkeypatch.chdir(tmp_path)
    file = tmp_path / "c.yaml"
    file.write_text("split_file: s.csv\nexclude: a.csv\nrelabel: r.csv\nworkers: h:1,h:2\n")
    file.write_text(file.read_text() + "worker_index: 0\ndistribute: multi-worker\n")
    saved = config.resolve(file=file, data_dir="d", out="o")
    assert saved.split_file == str(tmp_path / "s.csv") and saved.workers == "h:1,h:2"
    unset = [
        "--split-file",
        "none",
        "--exclude",
        "none",
        "--relabel",
        "None",
        "--workers",
        "none",
        "--worker-index",
        "none",
    ]
    args = build_parser().parse_args(["train", "d", "--out", "o", "--config", str(file), *unset])
    cfg = config.resolve(file=args.config, data_dir="d", out="o", **{k: getattr(args, k) for k in TRAIN_KEYS})
    assert (cfg.split_file, cfg.exclude, cfg.relabel, cfg.workers, cfg.worker_index) == (None,) * 5
    assert config.resolve(data_dir="none", out="o").data_dir == str(tmp_path / "none")  # a folder of that name


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("epochs: " + "[" * 3000 + "]" * 3000, "nests its values too deeply"),
        (
            "epochs: " + "9" * 5000,
            r"cannot read: an integer of 5000 characters is too long to be a setting \(line 1, column 9\)",
        ),
        ("seed: 0x" + "f" * 5000, r"Received: seed=<an int of 20,000 bits>"),
        ("[]", "must hold a mapping of settings. Received: list"),
        ("0", "must hold a mapping of settings. Received: int"),
    ],
    ids=["deep", "long-int", "long-hex", "empty-list", "zero"],
)
def test_config_files_that_crashed_or_passed_as_empty_are_config_errors(tmp_path, text, needle) -> None:
    """A 6 KB file of nested brackets was a RecursionError traceback, a 5,000-digit int a ValueError (even while
    echoing it in the message), and a file holding only [] or 0 gave the defaults silently."""
    path = tmp_path / "settings.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=needle):
        config.resolve(file=path, data_dir="d", out="o")


def test_config_files_read_as_yaml_1_2(tmp_path) -> None:
    """PyYAML's YAML 1.1 rules changed values: `augment: off` became False ("Received: augment=False"), `seed: 0123`
    the octal 83 and `epochs: 1:30` the base-60 90."""
    f = tmp_path / "c.yaml"
    f.write_text("augment: off\nseed: 0123\nepochs: 0o7\nfine_tune_epochs: 0x2\naudit: FALSE\nlearning_rate: 1e-4\n")
    cfg = config.resolve(file=f)
    assert (cfg.augment, cfg.seed, cfg.epochs, cfg.fine_tune_epochs, cfg.audit) == ("off", 123, 7, 2, False)
    assert cfg.learning_rate == 1e-4 and config.load_file(f)["seed"] == 123
    for text, received in (
        ("epochs: 1:30", "epochs='1:30'"),
        ("audit: yes", "audit='yes'"),
        ("seed: 1_0", "seed='1_0'"),
    ):
        f.write_text(text + "\n")
        with pytest.raises(ConfigError, match=f"Received: {received}"):
            config.resolve(file=f)


@pytest.mark.parametrize("text", ["1.0e5", "0o17", "1e5", "off", "yes", "0123", "1:30", "2024-01-01", "~", "1_000"])
def test_a_saved_config_reads_back_the_same_under_yaml_1_1_and_1_2(tmp_path, text) -> None:
    """A text that one rule reads as a number, bool, date or null is quoted in config.yaml: the run's own settings
    (and --resume's comparison with them) come back as given, and other YAML tools read them the same."""
    from floranet.rundir import RunDir
    from floranet.training.opening import settings_changed

    cfg = config.resolve(out=text, data_dir=str(tmp_path / "d"), weights="none")
    cfg.save(tmp_path / RunDir.CONFIG)
    saved = config.load_file(tmp_path / RunDir.CONFIG)
    assert saved["out"] == text and yaml.safe_load(cfg.to_yaml())["out"] == text
    assert config.resolve(file=tmp_path / RunDir.CONFIG) == cfg
    assert settings_changed(RunDir(tmp_path), cfg) == []


def test_resume_compares_a_hand_edited_config_as_floranet_reads_it(tmp_path) -> None:
    """--resume --config RUN/config.yaml was refused after an edit that TrainConfig accepts and normalises:
    "these differ: image_size (saved 32, given [32, 32])", "weights (saved 'none', given None)"; and a key the
    file lacked compared with the recommended preset's value, whatever preset the run had."""
    from floranet.rundir import RunDir
    from floranet.training.opening import check_resume_settings, settings_changed

    run = RunDir(tmp_path)
    file = tmp_path / RunDir.CONFIG
    cfg = config.resolve(data_dir=str(tmp_path / "d"), preset="tutorial", image_size=32, weights="none")
    cfg.save(file)
    saved = yaml.safe_load(file.read_text())
    saved.update(image_size=32, weights="none")
    del saved["epochs"], saved["fine_tune_epochs"]  # a run's config.yaml from before these were recorded
    file.write_text(yaml.safe_dump(saved))
    given = config.resolve(file=file)
    assert given == cfg and settings_changed(run, given) == []
    check_resume_settings(run, given)
    with pytest.raises(
        ConfigError, match=r"these differ: epochs \(saved 5, given 6\); image_size \(saved \[32, 32\], "
    ):
        check_resume_settings(run, dataclasses.replace(given, epochs=6, image_size=(48, 48)))


def test_a_bad_setting_of_a_runs_config_names_the_file_and_no_flags(tmp_path) -> None:
    """A run's config.yaml with preset: fast was not attributed to the file; and predict, evaluate, report, export,
    explain and audit, which read a run's config.yaml and have no such flags, were told of 'then the flags'."""
    import re

    from floranet.rundir import RunDir

    f = tmp_path / RunDir.CONFIG
    f.write_text("preset: fast\nepochs: 2\n")
    with pytest.raises(ConfigError, match=rf"Received: preset='fast' \(in the config file {re.escape(str(f))}\)$"):
        RunDir(tmp_path).config()
    f.write_text("epochs: -1\n")
    with pytest.raises(ConfigError, match=r"Received: epochs=-1 \(in the config file .*config.yaml\)$"):
        RunDir(tmp_path).config()
    with pytest.raises(ConfigError, match=r"Received: epochs=-1 \(settings of the config file .*, then the flags\)$"):
        config.resolve(file=f, data_dir="d", out="o")


def test_a_config_is_its_presets_recipe_and_records_what_it_changed(tmp_path) -> None:
    """TrainConfig() was labelled recommended but trained 5 epochs without fine-tuning, dropout or label smoothing
    (resolve()'s: 20, 2, 0.3, 0.1), and replace(preset=...) changed the label alone, which config.yaml and the
    model card then recorded as the recipe."""
    assert config.TrainConfig() == config.resolve()
    assert config.TrainConfig(preset="tutorial", epochs=2) == config.resolve(preset="tutorial", epochs=2)
    assert config.TrainConfig(preset="tutorial").early_stopping_patience == 0
    assert all(preset.keys() == config.PRESETS["recommended"].keys() for preset in config.PRESETS.values())
    assert config.resolve().preset_overrides() == {} and config.resolve().preset_text() == "recommended"
    relabelled = dataclasses.replace(config.resolve(), preset="tutorial")
    assert relabelled.epochs == 20 and relabelled.preset_overrides()["epochs"] == 20
    relabelled.save(tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert text.startswith("# preset tutorial, with settings of its own: epochs 20 (the preset's 5), ")
    assert config.resolve(file=tmp_path / "config.yaml") == relabelled  # the values are the record


def test_the_model_card_names_the_settings_a_run_gave_otherwise_than_its_preset(tmp_path) -> None:
    from floranet.evaluation.card_facts import CardFacts
    from floranet.evaluation.modelcard import _recipe
    from floranet.rundir import RunDir

    config.resolve(preset="tutorial", epochs=3, out=str(tmp_path)).save(tmp_path / RunDir.CONFIG)
    row = next(line for line in _recipe(CardFacts(RunDir(tmp_path))) if line.startswith("| preset |"))
    assert "tutorial, with settings of its own: epochs 3 \\(the preset's 5\\)" in row  # Markdown-escaped


@pytest.mark.parametrize("file", [3, b"x.yaml", ["x.yaml"]])
def test_a_config_file_that_is_no_path_is_refused_by_name(file) -> None:
    """resolve(file=3) and resolve(file=b'x.yaml') were TypeErrors from os.fspath and pathlib; then the error named
    `config`, the CLI's word, not the keyword the caller wrote."""
    with pytest.raises(
        ConfigError, match=rf"^file must be a YAML file's path .*Received: file={re.escape(repr(file))}$"
    ):
        config.resolve(file=file)


def test_a_blank_config_flag_is_named_as_the_cli_spells_it(capsys) -> None:
    """The library names its keyword (file); `train --config ' '` names the CLI's (config), as its empty one does."""
    from floranet.cli import main

    assert main(["train", "d", "--out", "o", "--config", " "]) == 2
    assert "config must be a YAML file path. Received: config=' '" in capsys.readouterr().err
    assert main(["train", "d", "--out", "o", "--config", ""]) == 2
    assert "Received: config=''" in capsys.readouterr().err


def test_dir_lists_the_lazy_names_and_the_public_functions_document_their_arguments() -> None:
    """dir(floranet) left out the lazily loaded names (load, train, the submodules) and dir(floranet.models) its
    submodules; TrainConfig.save, load_file, to_dict and to_yaml had no Args or Returns."""
    import floranet
    import floranet.models

    assert {"load", "train", "config", "training", "workflows", "__version__"} <= set(dir(floranet))
    assert set(floranet.__all__) <= set(dir(floranet)) and dir(floranet) == sorted(dir(floranet))
    assert {"resnet", "registry", "classifier", "backbones", "mobilenet", "weights"} <= set(dir(floranet.models))
    documented = (config.TrainConfig.save, config.load_file, config.train.absolute_paths, config.resolve)
    assert all("Args:" in (f.__doc__ or "") for f in documented), [f.__name__ for f in documented]
    assert all("Returns:" in (f.__doc__ or "") for f in (config.TrainConfig.to_dict, config.TrainConfig.to_yaml))
