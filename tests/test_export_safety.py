"""``electra-kit export`` never deletes or damages what it exports from, nor an old export until the new one is whole."""

import json
import re

import pytest
from test_run_dir import tiny_electra

from electra_kit.cli import main
from electra_kit.modelfolder import export as export_module
from electra_kit.modelfolder.pretrained import load_pretrained, save_pretrained


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    save_pretrained(tiny_electra(), run / "model")
    return run


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("out", ["r/model", "r/model/sub", "r", "r/exported", ".", "r/model/.."])
def test_export_refuses_an_out_dir_overlapping_the_model_folder_or_its_run_dir(tmp_path, run_dir, out, monkeypatch,
                                                                             capsys):
    monkeypatch.chdir(tmp_path)
    before = snapshot(run_dir)
    code = main(["export", "r/model", "--format", "portable", out, "--overwrite"])
    assert code == 2
    err = capsys.readouterr().err
    assert re.search(r"(is|inside|holds) (an |the )?input|current folder", err) and len(err.splitlines()) == 1
    assert snapshot(run_dir) == before
    load_pretrained(run_dir / "model")


def test_export_refuses_an_overlap_hidden_behind_a_symlink(tmp_path, run_dir, capsys):
    (tmp_path / "link").symlink_to(run_dir / "model")
    assert main(["export", str(run_dir / "model"), "--format", "portable", str(tmp_path / "link"), "--overwrite"]) == 2
    load_pretrained(run_dir / "model")


def test_export_with_overwrite_keeps_the_old_export_until_the_new_one_is_complete(tmp_path, run_dir, monkeypatch):
    out = tmp_path / "out"
    assert main(["export", str(run_dir / "model"), "--format", "portable", str(out)]) == 0
    before = snapshot(out)

    def broken(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export_module, "write_hf_tokenizer", broken)
    with pytest.raises(OSError):
        export_module.export(run_dir / "model", out, format="portable", overwrite=True)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "r"]  # no temporary folder left


def test_export_to_a_path_that_is_a_file_is_a_one_line_error(tmp_path, run_dir, capsys):
    (tmp_path / "f").write_text("mine")
    assert main(["export", str(run_dir / "model"), "--format", "portable", str(tmp_path / "f"), "--overwrite"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert (tmp_path / "f").read_text() == "mine"


def test_export_of_a_model_folder_with_invalid_config_json_names_the_file(tmp_path, run_dir, capsys):
    (run_dir / "model" / "config.json").write_text("{not json")
    assert main(["export", str(run_dir / "model"), "--format", "portable", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "not valid JSON" in err
    (run_dir / "model" / "config.json").write_text(json.dumps([1, 2]))
    assert main(["export", str(run_dir / "model"), "--format", "portable", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_export_overwrite_never_replaces_a_folder_that_is_not_an_export(tmp_path, run_dir, capsys):
    mine = tmp_path / "project"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert main(["export", str(run_dir / "model"), "--format", "portable", str(mine), "--overwrite"]) == 2
    assert "electra-kit did not make" in capsys.readouterr().err
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_export_refuses_the_current_folder_as_out_dir(tmp_path, run_dir, monkeypatch, capsys):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    monkeypatch.chdir(work / "sub")
    for out in (".", ".."):
        assert main(["export", str(run_dir / "model"), "--format", "portable", out, "--overwrite"]) == 2
        assert "current folder" in capsys.readouterr().err
    assert (work / "sub").is_dir()
