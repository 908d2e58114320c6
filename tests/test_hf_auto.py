"""transformers' AutoConfig / AutoModel / AutoTokenizer and pipeline on electra-kit model folders
(electra_kit/modelfolder/hf_auto.py, hf_model.py), for every built-in backbone and a plugin's; with
trust_remote_code=True from a fresh process that never imports electra_kit; export's default per backbone.

Each folder is a fresh tiny Electra saved as a run saves it; the reference is the kit's own
``load_pretrained(folder).encode(texts)``. Reformer uses LSH attention (bucket 4), the case where the
hidden states depend on the padding and on random rotations: both sides get the same seed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import electra_kit  # noqa: F401  (registers with transformers: imported before it, as a user would)
from electra_kit import Electra, create_backbone
from electra_kit.modelfolder.export import export
from electra_kit.modelfolder.pretrained import load_pretrained, save_pretrained

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach a hub
ATOL = 1e-5
MAX_LEN = 32
TEXTS = ["The state of the union is strong.", "Peace.", "Taxes and jobs."]
EXTRA = {"reformer": {"bucket_size": 4}}  # LSH attention on: 32 tokens = 4 buckets of 4, x2 chunks


@pytest.fixture(scope="module")
def tokenizer(small_corpus):
    from electra_kit.data.tokenizer import train_wordpiece

    return train_wordpiece((f.read_text() for f in sorted(small_corpus.glob("*.txt"))), vocab_size=300)


def save_tiny(name: str, folder, tokenizer):
    torch.manual_seed(0)
    kw = dict(num_tokens=tokenizer.get_vocab_size(), max_seq_len=MAX_LEN, emb_dim=16, heads=2, depth=2,
              **EXTRA.get(name, {}))
    model = Electra(create_backbone(name, dim=16, **kw), create_backbone(name, dim=32, **kw))
    return save_pretrained(model, folder, tokenizer=tokenizer, special_ids={"pad_id": 0}, max_seq_len=MAX_LEN)


# toyconv: the test plugin package's backbone (tests/plugin_pkg), known to electra-kit by entry point only
@pytest.fixture(scope="module", params=["transformer", "reformer", "performer", "toyconv"])
def model_dir(request, tokenizer, tmp_path_factory):
    return save_tiny(request.param, tmp_path_factory.mktemp(request.param) / "model", tokenizer)


def kit_hidden(folder, texts):
    encoder = load_pretrained(folder)
    torch.manual_seed(1)  # Reformer draws its hash rotations at every forward: the same seed on both sides
    return encoder.encode(texts)


def test_auto_classes_give_the_kits_tokens_and_hidden_states(model_dir):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    assert type(config).__name__ == "ElectraKitConfig" and config.hidden_size == 32 and config.max_seq_len == MAX_LEN
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert type(tok).__name__ == "ElectraKitTokenizerFast" and tok.model_max_length == MAX_LEN
    model = AutoModel.from_pretrained(model_dir)
    assert type(model).__name__ == "ElectraKitModel" and not model.training

    batch = tok(TEXTS, padding=True, return_tensors="pt")  # padded to the longest: the mask matters
    assert set(batch) == {"input_ids", "attention_mask"}
    hidden, mask = kit_hidden(model_dir, TEXTS)
    n = batch["input_ids"].shape[1]
    assert n <= MAX_LEN - 8 and not mask[:, n:].any()  # Reformer alone would pad to a multiple of 8 < MAX_LEN
    kit_ids = load_pretrained(model_dir).tokenize(TEXTS)["input_ids"][:, :n]
    assert torch.equal(batch["input_ids"], kit_ids) and torch.equal(batch["attention_mask"].bool(), mask[:, :n])
    torch.manual_seed(1)
    with torch.no_grad():
        out = model(**batch).last_hidden_state  # (b, n, d)
    real = mask[:, :n]
    assert out.shape == (len(TEXTS), n, 32)
    assert (out - hidden[:, :n])[real].abs().max().item() < ATOL


def test_feature_extraction_pipeline_on_a_reformer_folder(tokenizer, tmp_path):
    from transformers import pipeline

    folder = save_tiny("reformer", tmp_path / "model", tokenizer)
    extract = pipeline("feature-extraction", model=str(folder))
    for text in TEXTS[:2]:
        hidden, mask = kit_hidden(folder, [text])
        torch.manual_seed(1)
        out = torch.tensor(extract(text))  # (1, n, d): the text's tokens, no padding
        n = int(mask.sum())
        assert out.shape == (1, n, 32)
        assert (out[0] - hidden[0, :n]).abs().max().item() < ATOL
    long = " ".join(TEXTS * 6)  # truncated as the kit truncates: to max_seq_len, [CLS] and [SEP] included
    hidden, _ = kit_hidden(folder, [long])
    torch.manual_seed(1)
    out = torch.tensor(extract(long, truncation=True))
    assert out.shape == (1, MAX_LEN, 32) and (out[0] - hidden[0]).abs().max().item() < ATOL


def test_the_docs_example_runs(tokenizer, tmp_path):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "docs" / "models.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "AutoModel.from_pretrained" in b)
    folder = save_tiny("transformer", tmp_path / "model", tokenizer)
    scope: dict = {}
    exec(code.replace('"runs/reformer_small-.../model"', repr(str(folder))), scope)
    assert scope["hidden"].shape[::2] == (2, 32) and torch.tensor(scope["features"]).shape[::2] == (1, 32)


def test_saved_by_transformers_loads_in_both(tokenizer, tmp_path):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(save_tiny("transformer", tmp_path / "model", tokenizer))
    model.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["auto_map"]["AutoModel"].endswith("ElectraKitModel")
    assert (tmp_path / "again" / "modeling_electra_kit.py").is_file()  # trust_remote_code=True loads it too
    ids = torch.randint(5, 300, (2, 9))
    with torch.no_grad():
        want = model(ids).last_hidden_state
        assert torch.equal(AutoModel.from_pretrained(tmp_path / "again")(ids).last_hidden_state, want)
        assert torch.equal(load_pretrained(tmp_path / "again")(ids), want)
    assert type(AutoModel.from_config(model.config).backbone) is type(model.backbone)  # untrained, same architecture


def test_a_folder_from_before_model_type_loads_after_a_portable_export(tokenizer, tmp_path):
    from transformers import AutoConfig, AutoModel

    old = save_tiny("transformer", tmp_path / "old", tokenizer)
    config = json.loads((old / "config.json").read_text())
    del config["model_type"], config["auto_map"]  # neither was written then
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type"):  # transformers' own message names the missing key
        AutoConfig.from_pretrained(old)
    export(old, tmp_path / "new", format="portable")
    ids = torch.randint(5, 300, (1, 7))
    with torch.no_grad():
        assert torch.equal(AutoModel.from_pretrained(tmp_path / "new")(ids).last_hidden_state, load_pretrained(old)(ids))


def test_import_electra_kit_does_not_import_transformers_and_registers_when_it_is(tokenizer, tmp_path):
    folder = save_tiny("performer", tmp_path / "model", tokenizer)
    code = (
        "import importlib.util, sys, electra_kit\n"
        "assert 'transformers' not in sys.modules, 'import electra_kit imported transformers'\n"
        "assert importlib.util.find_spec('transformers') is not None  # a probe, as libraries do: imports nothing\n"
        "from transformers import AutoModel\n"
        f"print(type(AutoModel.from_pretrained({str(folder)!r})).__name__)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ElectraKitModel"


def test_export_by_default_writes_a_folder_and_exits_0_for_every_backbone(model_dir, tmp_path, capsys):
    from electra_kit.cli import main

    assert main(["export", str(model_dir), str(tmp_path / "out")]) == 0  # --format auto
    out = capsys.readouterr().out
    assert "wrote the portable folder" in out and "trust_remote_code=True" in out
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_electra_kit.ElectraKitModel"
    assert (tmp_path / "out" / "modeling_electra_kit.py").is_file()


def test_trust_remote_code_loads_every_backbone_in_a_fresh_process_without_import_electra_kit(tokenizer, tmp_path):
    """config.json's auto_map names the classes of the folder's modeling_electra_kit.py, which imports them from
    electra-kit: transformers alone finds them (saved and exported folders), and says what to install without it."""
    folders = []
    for name in ("transformer", "reformer", "performer"):
        folders.append(save_tiny(name, tmp_path / name / "model", tokenizer))
        folders.append(export(folders[-1], tmp_path / name / "exported").out_dir)
    ids = torch.randint(5, 300, (2, 16))
    code = (
        "import sys, torch\n"
        "sys.modules['electra_kit'] = None  # first as if electra-kit were not installed\n"
        "from transformers import AutoModel, AutoTokenizer\n"
        f"folders, ids = {[str(f) for f in folders]!r}, torch.tensor({ids.tolist()!r})\n"
        "try:\n"
        "    AutoModel.from_pretrained(folders[0], trust_remote_code=True)\n"
        "except ImportError as exc:\n"
        "    print('WITHOUT:', exc)\n"
        "del sys.modules['electra_kit']\n"
        "out = {}\n"
        "for folder in folders:\n"
        "    assert 'electra_kit' not in sys.modules or folder != folders[0]\n"
        "    model = AutoModel.from_pretrained(folder, trust_remote_code=True)\n"
        "    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)\n"
        "    assert tok('Peace.')['input_ids'][0] == tok.cls_token_id\n"
        "    torch.manual_seed(1)\n"
        "    with torch.no_grad():\n"
        "        out[folder] = model(ids).last_hidden_state\n"
        f"torch.save(out, {str(tmp_path / 'hidden.pt')!r})\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_MODULES_CACHE": str(tmp_path / "hf_modules")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WITHOUT: This model folder was written by electra-kit" in done.stdout
    assert "pip install 'electra-kit[transformers]'" in done.stdout
    hidden = torch.load(tmp_path / "hidden.pt", weights_only=True)
    from transformers import AutoModel

    for folder in folders:  # the model electra-kit's registration loads here (its hidden states: the tests above)
        model = AutoModel.from_pretrained(folder)
        torch.manual_seed(1)  # Reformer's hash rotations: the same draw on both sides
        with torch.no_grad():
            want = model(ids).last_hidden_state
        assert hidden[str(folder)].shape == (2, 16, 32) and (hidden[str(folder)] - want).abs().max().item() < ATOL, folder
