"""Files and folders electra-kit writes keep the user's umask (issue 27): a model folder shared with a team
stays readable to it, whichever route wrote the file (a temporary from mkstemp, or safetensors' own writer)."""

import os
import stat

import pytest
import torch
from test_run_dir import tiny_electra

from electra_kit.modelfolder.pretrained import save_pretrained
from electra_kit.rundir.atomic import atomic_write
from electra_kit.rundir.checkpoint import save_checkpoint


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_and_folders_keep_the_users_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        folder = save_pretrained(tiny_electra(), tmp_path / "model")
        path = atomic_write(tmp_path / "a.json", "{}")
        ckpt = save_checkpoint(tmp_path / "checkpoints", 1, model_state={"w": torch.zeros(2)}, torch_state={},
                               trainer_state={}, operative_config="")
    finally:
        os.umask(old)
    files = [path, *folder.iterdir(), *ckpt.iterdir()]
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}
    for made in (folder, ckpt):
        assert oct(stat.S_IMODE(made.stat().st_mode)) == oct(0o777 & ~umask)
