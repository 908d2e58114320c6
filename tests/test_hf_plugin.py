"""The Hugging Face plugin (plugins/electra-kit-hf), `electra-kit export`, and the plugin how-to.

The plugin is installed by the test set-up like any third-party package; electra-kit reaches it
only through the `electra_kit.backbones` entry point. Everything runs offline: the models are
built from configs, and transformers loads only the folders written here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file

from electra_kit import Electra, create_backbone
from electra_kit.cli import main as cli_main
from electra_kit.modelfolder.export import EXIT_NOT_HF, export
from electra_kit.modelfolder.pretrained import load_pretrained, save_pretrained
from electra_kit.objectives.heads import DiscriminatorHead, GeneratorHead
from electra_kit.registry import backbone_entries

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may reach a hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"
REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "plugins" / "electra-kit-hf"
ATOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _plugin_installed():
    entries = {e.name: e for e in backbone_entries()}
    assert "hf-electra" in entries, f"install the plugin: pip install -c constraints/cpu.txt --no-deps {PLUGIN}"


@pytest.fixture(scope="module")
def sentences(small_corpus) -> list[str]:
    """Real text: the first paragraphs of the corpus speeches, of different lengths."""
    paras = [p.strip() for f in sorted(small_corpus.glob("*.txt")) for p in f.read_text().split("\n\n") if p.strip()]
    return [max(paras[:30], key=len), paras[1][:80], paras[5][:200], "Peace."]


@pytest.fixture(scope="module")
def tokenizer(small_corpus):
    from electra_kit.data.tokenizer import train_wordpiece

    return train_wordpiece((f.read_text() for f in sorted(small_corpus.glob("*.txt"))), vocab_size=400)


def hf_load(cls, folder):
    return cls.from_pretrained(folder, local_files_only=True).eval()


def hf_batch(folder, sentences, max_len=64):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return tok(sentences, padding=True, truncation=True, max_length=max_len, return_tensors="pt")


def max_diff(a, b, mask):
    return (a - b)[mask].abs().max().item()


# ---- the plugin ------------------------------------------------------------------------------


def test_plugin_is_registered_by_its_distribution_and_electra_kit_never_imports_it():
    entry = {e.name: e for e in backbone_entries()}["hf-electra"]
    assert entry.source.startswith("electra-kit-hf ") and entry.target == "electra_kit_hf:build_hf_electra"
    ours = [*(REPO / "electra_kit").rglob("*.py"), *(REPO / "backbones").rglob("*.py")]
    assert not [p for p in ours if "electra_kit_hf" in p.read_text()], "electra-kit must reach the plugin only by entry point"


def test_shared_backbone_suite():
    from electra_kit.testing import check_backbone

    assert set(check_backbone("hf-electra").values()) == {"ok"}


def test_backbone_is_transformers_electra_with_the_shared_names():
    from transformers import ElectraModel

    bb = create_backbone("hf-electra", num_tokens=100, dim=64, depth=3, heads=4, max_seq_len=48, emb_dim=32,
                         ff_mult=4, dropout=0.1, hidden_act="gelu_new")
    assert isinstance(bb.electra, ElectraModel)
    c = bb.electra.config
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.max_position_embeddings,
            c.embedding_size, c.intermediate_size) == (100, 64, 3, 4, 48, 32, 256)
    assert (c.hidden_dropout_prob, c.attention_probs_dropout_prob, c.hidden_act) == (0.1, 0.1, "gelu_new")
    assert hasattr(bb.electra, "embeddings_project")  # emb 32 -> hidden 64, as ELECTRA-Small's 128 -> 256


def test_hf_electra_small_gin_builds_googles_electra_small():
    import gin
    from electra_kit.training.pretrain import parse_config

    parse_config(["hf_electra_small.gin"], ["VOCAB_SIZE = 1000"])
    try:
        model = Electra(mask_token_id=2, pad_token_id=0)
    finally:
        gin.clear_config()

    def shape(c):
        return c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size, c.embedding_size, c.max_position_embeddings

    assert shape(model.discriminator.electra.config) == (256, 12, 4, 1024, 128, 128)
    assert shape(model.generator.electra.config) == (64, 12, 1, 256, 128, 128)
    assert model.discriminator.get_token_embedding() is model.generator.get_token_embedding()


# ---- train through the CLI, export, load with transformers -----------------------------------


def electra_kit_outputs(model_dir, ids, mask):
    """What electra-kit computes from its own model folder: hidden states and both heads' logits."""
    disc = load_pretrained(model_dir)
    disc_head = DiscriminatorHead(disc.hidden_dim)
    disc_head.load_state_dict(load_file(model_dir / "encoder_head.safetensors"))
    gen = load_pretrained(model_dir, part="generator")
    gen_head = GeneratorHead(gen.backbone)
    state = load_file(model_dir / "generator.safetensors")
    gen_head.load_state_dict({k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")})
    with torch.no_grad():
        h, g = disc(ids, mask), gen(ids, mask)
        return h, disc_head(h), g, gen_head(g)


def test_cli_run_export_and_load_with_transformers(tmp_path, small_corpus, cache_dir, sentences):
    from transformers import ElectraForMaskedLM, ElectraForPreTraining

    from electra_kit.data.build import encode_texts

    run_cli("run", "hf_electra_tiny.gin", "--no-tracking", "--run-dir", "run", "--gin", "train.progress = False",
            "--gin", f"build_data.corpus = '{small_corpus}/*.txt'", cwd=tmp_path)
    model_dir, out = tmp_path / "run" / "model", tmp_path / "hf"
    proc = run_cli("export", str(model_dir), "--format", "hf", str(out), cwd=tmp_path)
    assert "ElectraForPreTraining" in proc.stdout and "generator/" in proc.stdout
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}

    batch = hf_batch(out, sentences)
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    ref_ids, ref_mask = encode_texts(load_pretrained(model_dir).tokenizer, sentences, 64, pad_to_longest=True)
    assert torch.equal(ids, ref_ids) and torch.equal(mask, ref_mask), "AutoTokenizer and electra-kit tokenize alike"
    assert mask.sum(1).tolist()[0] == 64 and mask.sum(1).min() < 10  # truncated and padded rows both

    disc_h, disc_logits, gen_h, gen_logits = electra_kit_outputs(model_dir, ids, mask)
    with torch.no_grad():
        d = hf_load(ElectraForPreTraining, out)(**batch, output_hidden_states=True)
        g = hf_load(ElectraForMaskedLM, out / "generator")(**batch, output_hidden_states=True)
    diffs = {"discriminator hidden": max_diff(d.hidden_states[-1], disc_h, mask),
             "discriminator logits": max_diff(d.logits, disc_logits, mask),
             "generator hidden": max_diff(g.hidden_states[-1], gen_h, mask),
             "generator logits": max_diff(g.logits, gen_logits, mask)}
    print(diffs)
    assert max(diffs.values()) < ATOL, diffs
    assert disc_h.abs().max() > 0.1 and gen_logits.abs().max() > 0.1  # compared real outputs, not zeros

    again = run_cli("export", str(model_dir), "--format", "hf", str(out), cwd=tmp_path, check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr


@pytest.mark.parametrize("case", ["gdes", "none", "mixed", "mlm"])
def test_export_variants_match(tmp_path, tokenizer, sentences, case):
    """Sharing modes, a non-HF generator, and the MaskedLM objective, against the in-memory model."""
    from transformers import ElectraForMaskedLM, ElectraForPreTraining

    from electra_kit.objectives.mlm import MaskedLM

    torch.manual_seed(0)
    kw = dict(num_tokens=tokenizer.get_vocab_size(), max_seq_len=64, emb_dim=16, heads=2)
    disc = create_backbone("hf-electra", dim=32, depth=2, **kw)
    if case == "mlm":
        model = MaskedLM(disc)
    else:
        gen = create_backbone("transformer" if case == "mixed" else "hf-electra", dim=16, depth=1, **kw)
        model = Electra(gen, disc, embedding_sharing="tied" if case == "mixed" else case)
    with torch.no_grad():  # trained-looking weights: GDES delta, head biases and norms all non-trivial
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    save_pretrained(model, tmp_path / "model", tokenizer=tokenizer, special_ids={"pad_id": 0}, max_seq_len=64)
    result = export(tmp_path / "model", tmp_path / "hf")
    assert result.format == "hf"

    batch = hf_batch(tmp_path / "hf", sentences)
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    with torch.no_grad():
        h = model.encoder(ids, attention_mask=mask)
        if case == "mlm":
            out = hf_load(ElectraForMaskedLM, tmp_path / "hf")(**batch, output_hidden_states=True)
            assert max_diff(out.logits, model.head(h), mask) < ATOL
        else:
            out = hf_load(ElectraForPreTraining, tmp_path / "hf")(**batch, output_hidden_states=True)
            assert max_diff(out.logits, model.discriminator_head(h), mask) < ATOL
        assert max_diff(out.hidden_states[-1], h, mask) < ATOL
        if case in ("gdes", "none"):
            g = model.generator(ids, attention_mask=mask)
            gout = hf_load(ElectraForMaskedLM, tmp_path / "hf" / "generator")(**batch, output_hidden_states=True)
            assert max_diff(gout.hidden_states[-1], g, mask) < ATOL
            assert max_diff(gout.logits, model.generator_head(g), mask) < ATOL
    if case == "mixed":
        assert not (tmp_path / "hf" / "generator").exists() and "not exported: the generator" in result.message


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_fine_tuned_folder_exports_as_electra_for_sequence_classification(tmp_path, tokenizer, sentences, task):
    """A model folder as `electra-kit finetune` keeps it: transformers' logits are electra-kit's."""
    from transformers import ElectraForSequenceClassification

    from electra_kit import load_classifier
    from electra_kit.finetune.model import SequenceModel

    torch.manual_seed(0)
    backbone = create_backbone("hf-electra", num_tokens=tokenizer.get_vocab_size(), dim=32, depth=2, heads=2,
                               max_seq_len=64, emb_dim=16, dropout=0.1)
    labels = ["ABBR", "DESC", "HUM"] if task == "classification" else None
    model = SequenceModel(backbone, 3 if labels else 1, 0.1, task, "cls", task_config={
        "labels": labels, "columns": {"text": "text", "pair": None, "label": "label"}, "max_seq_len": 48})
    with torch.no_grad():  # trained-looking weights: a head that is not its initialisation
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_pretrained(model, tmp_path / "model", tokenizer=tokenizer, special_ids={"pad_id": 0}, max_seq_len=64)
    assert cli_main(["export", str(tmp_path / "model"), "--format", "hf", str(tmp_path / "hf")]) == 0

    hf = hf_load(ElectraForSequenceClassification, tmp_path / "hf")
    batch = hf_batch(tmp_path / "hf", sentences, max_len=48)  # the length fine-tuning truncated to
    with torch.no_grad():
        got = hf(**batch).logits  # (b, k)
    expected = load_classifier(tmp_path / "model").logits(sentences)  # (b, k)
    assert got.shape == expected.shape == (len(sentences), 3 if labels else 1)
    assert (got - expected).abs().max().item() < ATOL and expected.abs().max() > 0.01
    if labels:
        assert hf.config.id2label == dict(enumerate(labels)) and hf.config.label2id == {k: i for i, k in enumerate(labels)}
    else:
        assert hf.config.problem_type == "regression" and hf.config.num_labels == 1


def test_a_mean_pooled_fine_tuned_folder_is_refused_by_name(tmp_path, tokenizer, capsys):
    from electra_kit.finetune.model import SequenceModel

    backbone = create_backbone("hf-electra", num_tokens=tokenizer.get_vocab_size(), dim=16, depth=1, heads=2,
                               max_seq_len=32)
    model = SequenceModel(backbone, 2, 0.1, "classification", "mean", task_config={"labels": ["a", "b"], "max_seq_len": 32})
    save_pretrained(model, tmp_path / "model", tokenizer=tokenizer)
    assert cli_main(["export", str(tmp_path / "model"), "--format", "hf", str(tmp_path / "hf")]) == 2
    assert "--pooling mean" in capsys.readouterr().err and not (tmp_path / "hf").exists()


# ---- other backbones: the portable folder, said plainly ----------------------------------------


def test_other_backbone_gets_the_portable_folder_and_a_clear_message(tmp_path, tokenizer, capsys):
    torch.manual_seed(0)
    kw = dict(num_tokens=tokenizer.get_vocab_size(), max_seq_len=64, emb_dim=16, heads=2, depth=1)
    model = Electra(create_backbone("transformer", dim=16, **kw), create_backbone("transformer", dim=32, **kw))
    model_dir = save_pretrained(model, tmp_path / "model", tokenizer=tokenizer, special_ids={"pad_id": 0},
                                operative_config="# ran", max_seq_len=64)

    assert cli_main(["export", str(model_dir), "--format", "hf", str(tmp_path / "out")]) == EXIT_NOT_HF == 3
    err = capsys.readouterr().err
    assert "'transformer' backbone has no Hugging Face transformers equivalent" in err
    assert "NOT a folder transformers" in err and "portable folder" in err and "load_pretrained" in err
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {p.name for p in model_dir.iterdir()} | {"tokenizer_config.json"} == files

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "out", local_files_only=True)  # the tokenizer part is portable
    assert tok("Congress shall act.")["input_ids"] == [3, *tokenizer.encode("Congress shall act.", add_special_tokens=False).ids, 4]
    ids = torch.tensor([tok("Congress shall act.")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(load_pretrained(tmp_path / "out")(ids), model.encoder(ids))

    assert cli_main(["export", str(model_dir), "--format", "portable", str(tmp_path / "p")]) == 0
    assert "portable folder" in capsys.readouterr().out
    assert cli_main(["export", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2
    assert "not an electra-kit model folder" in capsys.readouterr().err


# ---- docs/backbones.md's "Write your own backbone" ---------------------------------------------


def _section() -> str:
    text = (REPO / "docs" / "backbones.md").read_text()
    start = text.index("## Write your own backbone")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_readme_worked_example_is_the_tested_plugin_verbatim():
    section = _section()
    code = re.findall(r"```py\n(.*?)```", section, flags=re.S)
    toml = re.findall(r"```toml\n(.*?)```", section, flags=re.S)
    plugin = REPO / "tests" / "plugin_pkg"
    assert code and code[0] == (plugin / "electra_kit_toy_backbone" / "__init__.py").read_text()
    assert toml and toml[0] == (plugin / "pyproject.toml").read_text()
    assert len(code[0].splitlines()) <= 60  # the size we promise: one file, about 50 lines
    entry_lines = [line for line in toml[0].splitlines() if line.startswith("toyconv =")]
    assert len(entry_lines) == 1


def test_readme_conformance_snippet_runs():
    snippets = [b for b in re.findall(r"```python\n(.*?)```", _section(), flags=re.S) if "check_backbone(" in b]
    assert snippets
    scope: dict = {}
    exec(compile(snippets[0], "README.md", "exec"), scope)
    assert scope["results"] and all(v == "ok" or v.startswith("skipped:") for v in scope["results"].values())
