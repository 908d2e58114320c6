"""Bad fine-tuning inputs: each a one-line error naming the flag or file, exit 2, no run directory left behind."""

import csv
import shutil

import pytest
from conftest import error_lines

from electra_kit.cli import main
from electra_kit.data.tokenizer import train_wordpiece
from electra_kit.finetune.tasks import FIELD_LIMIT, infer_task, read_labeled
from electra_kit.modelfolder.pretrained import save_pretrained


@pytest.fixture
def model_dir(tmp_path):
    from test_run_dir import tiny_electra

    tok = train_wordpiece(["the nation and the people of the union"] * 20, vocab_size=50)
    return save_pretrained(tiny_electra(), tmp_path / "model", tokenizer=tok, special_ids={"pad": 0, "mask": 2})


@pytest.fixture
def pairs(tmp_path):
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence1", "sentence2", "label"])
        for i in range(12):
            w.writerow([f"the nation {i}", f"the people {i % 3}", i % 2])
    return path


def finetune(tmp_path, model, train, *flags):
    return main(["finetune", "--model", str(model), "--train", str(train), "--eval", str(train), "--no-tracking",
                 "--no-progress", "--run-dir", str(tmp_path / "ft"), *flags])


@pytest.mark.parametrize("flags, named", [
    (["--max-seq-len", "2"], "--max-seq-len 2"),
    (["--max-seq-len", "-5"], "--max-seq-len -5"),
    (["--epochs", "inf"], "--epochs inf"),
    (["--epochs", "nan"], "--epochs nan"),
    (["--lr", "-1"], "--lr -1"),
    (["--dropout", "1.5"], "--dropout 1.5"),
    (["--seeds", "0"], "--seeds 0"),
    (["--device", "tpu"], "--device 'tpu'"),
])
def test_a_bad_finetune_flag_is_one_line_naming_it(tmp_path, model_dir, pairs, capsys, flags, named):
    assert finetune(tmp_path, model_dir, pairs, *flags) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and named in err, err
    assert not (tmp_path / "ft").exists()


def test_a_damaged_model_folder_is_one_line_naming_the_file(tmp_path, model_dir, pairs, capsys):
    weights = model_dir / "encoder.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert finetune(tmp_path, model_dir, pairs) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and "encoder.safetensors" in err and "damaged" in err
    assert not (tmp_path / "ft").exists()


def test_a_model_folder_whose_weights_do_not_match_its_config_is_named(tmp_path, model_dir, pairs, capsys):
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    config = (other / "config.json").read_text().replace('"dim": 16', '"dim": 24')
    (other / "config.json").write_text(config)
    assert finetune(tmp_path, other, pairs) == 2
    assert "does not match its config.json" in capsys.readouterr().err


def test_a_csv_field_longer_than_the_csv_modules_limit_is_read(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("text,label\n" + "x" * 200_000 + ",1\ny,0\n")
    data, _ = read_labeled(path)
    assert len(data.texts[0]) == 200_000
    path.write_text("text,label\n\"" + "x" * (FIELD_LIMIT + 1) + "\",1\n")
    with pytest.raises(ValueError, match=r"long.csv:\d+: not valid CSV"):
        read_labeled(path)


def test_a_run_dir_that_is_a_file_is_one_line(tmp_path, model_dir, pairs, capsys):
    (tmp_path / "afile").write_text("mine")
    code = main(["finetune", "--model", str(model_dir), "--train", str(pairs), "--eval", str(pairs), "--no-tracking",
                 "--run-dir", str(tmp_path / "afile" / "ft")])
    err = error_lines(capsys.readouterr().err)
    assert code == 2 and err.count("\n") == 0 and "afile, which is a file, not a folder" in err, err


def test_task_auto_warns_when_labels_that_are_mostly_numbers_become_classes():
    with pytest.warns(UserWarning, match="labels are numbers but some are not"):
        assert infer_task(["1.5", "2.0", "3.25", "n/a"]) == "classification"
    with pytest.warns(UserWarning, match="distinct whole-number labels"):
        assert infer_task([str(i) for i in range(30)]) == "classification"


def test_every_setting_has_one_source_the_flags_come_from(capsys):
    """The CLI's fine-tuning flags, their defaults and their checks are FinetuneConfig's fields: none is restated."""
    from dataclasses import fields

    from electra_kit.config.checks import ConfigValueError
    from electra_kit.finetune.config import FinetuneConfig

    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    offered = [f for f in fields(FinetuneConfig) if f.metadata["flag"]]
    assert len(offered) >= 15
    for f in offered:
        flag = "--" + f.name.replace("_", "-")
        assert flag in help_text, flag
        if f.default is not None and not isinstance(f.default, bool):
            assert f"({f.default})" in help_text, (flag, f.default)
    with pytest.raises(ConfigValueError, match="--dropout 1.5: must be a number in"):
        FinetuneConfig(dropout=1.5)  # the API checks what the CLI checks
