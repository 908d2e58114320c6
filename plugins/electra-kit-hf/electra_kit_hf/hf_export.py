"""An electra-kit model folder as transformers folders (``electra-kit export MODEL_DIR --format hf OUT``).

    OUT/            ElectraForPreTraining: the discriminator and its replaced-token-detection head
    OUT/generator/  ElectraForMaskedLM: the generator and its LM head
    (a MaskedLM-objective folder has no generator: OUT is its encoder + LM head, ElectraForMaskedLM;
    a fine-tuned folder, ``electra-kit finetune``'s RUN_DIR/model, is ElectraForSequenceClassification)

Each gets the tokenizer too. The backbone's keys are HF's already (``electra.*``); the heads map
``DiscriminatorHead`` dense/out -> ``discriminator_predictions.dense``/``dense_prediction`` and
``GeneratorHead`` dense/norm/bias -> ``generator_predictions.dense``/``LayerNorm``,
``generator_lm_head.bias``, the LM weight being the tied word embedding, as in Google's checkpoints.
The fine-tuning head (dropout -> dense -> GELU -> dropout -> out on the first token) is HF's
``ElectraClassificationHead`` layer for layer: dense/out -> ``classifier.dense``/``classifier.out_proj``.
Loading is strict, so a weight left out or left over is an error, not a silent re-initialisation.
"""

from __future__ import annotations

import copy
from pathlib import Path

from safetensors.torch import load_file
from transformers import ElectraForMaskedLM, ElectraForPreTraining, ElectraForSequenceClassification
from transformers.utils import logging as hf_logging

from electra_kit import create_backbone
from electra_kit.modelfolder.export import write_hf_tokenizer
from electra_kit.modelfolder.pretrained import read_config

DISC_HEAD = {"dense.": "discriminator_predictions.dense.", "out.": "discriminator_predictions.dense_prediction."}
CLS_HEAD = {"dense.": "classifier.dense.", "out.": "classifier.out_proj."}
LM_HEAD = {"dense.": "generator_predictions.dense.", "norm.": "generator_predictions.LayerNorm.",
           "bias": "generator_lm_head.bias"}


def _renamed(state: dict, mapping: dict) -> dict:
    out = {}
    for key, tensor in state.items():
        prefix = next((p for p in mapping if key.startswith(p)), None)
        if prefix is None:
            raise KeyError(f"unexpected head weight {key!r}; known prefixes {sorted(mapping)}")
        out[mapping[prefix] + key[len(prefix):]] = tensor
    return out


def _save(cls, config, state: dict, model_dir: Path, out: Path) -> None:
    model = cls(config)
    if cls is ElectraForMaskedLM:
        state["generator_lm_head.weight"] = state["electra.embeddings.word_embeddings.weight"]  # tied
    model.load_state_dict(state, strict=True)
    model.save_pretrained(out)
    write_hf_tokenizer(model_dir, out)


def export(model_dir, out_dir) -> str:
    from . import HFElectra

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    hf_logging.disable_progress_bar()  # save_pretrained's shard bar: noise in a CLI's output
    config = read_config(model_dir)
    spec = config["encoder"]
    encoder = create_backbone(spec["name"], **spec["kwargs"])
    enc_state = load_file(model_dir / "encoder.safetensors")
    if "task" in config:  # fine-tuned by electra-kit finetune
        return _export_classifier(config, encoder, enc_state, model_dir, out_dir)
    head = load_file(model_dir / "encoder_head.safetensors")
    if config.get("objective") != "Electra":  # MaskedLM: the encoder carries the LM head
        _save(ElectraForMaskedLM, encoder.electra.config, {**enc_state, **_renamed(head, LM_HEAD)}, model_dir, out_dir)
        return "  ElectraForMaskedLM: the encoder and its LM head, with the tokenizer"
    _save(ElectraForPreTraining, encoder.electra.config, {**enc_state, **_renamed(head, DISC_HEAD)}, model_dir, out_dir)
    lines = ["  ./           ElectraForPreTraining: the discriminator and its replaced-token head, with the tokenizer"]
    gen_spec = config["generator"]
    generator = create_backbone(gen_spec["name"], **gen_spec["kwargs"])
    if isinstance(generator, HFElectra):
        state = load_file(model_dir / "generator.safetensors")
        gen = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        lm = _renamed({k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}, LM_HEAD)
        _save(ElectraForMaskedLM, generator.electra.config, {**gen, **lm}, model_dir, out_dir / "generator")
        lines.append("  generator/   ElectraForMaskedLM: the generator and its LM head, with the tokenizer")
    else:
        lines.append(f"  not exported: the generator ('{gen_spec['name']}' has no transformers equivalent)")
    if config.get("embedding_sharing") != "none":
        lines.append(f"  the embeddings the two shared ({config.get('embedding_sharing')}) are copied into each folder"
                     + (", the discriminator's with its GDES delta added" if config.get("embedding_sharing") == "gdes" else ""))
    lines.append("  not covered: optimizer state and checkpoints (they stay in the run directory)")
    return "\n".join(lines)


def _export_classifier(config: dict, encoder, enc_state: dict, model_dir: Path, out_dir: Path) -> str:
    task = config["task"]
    if task.get("pooling", "cls") != "cls":
        raise ValueError(f"{model_dir} was fine-tuned with --pooling {task['pooling']}, but "
                         "ElectraForSequenceClassification reads the first token only; fine-tune with --pooling cls "
                         "to export it to transformers")
    hf_config = copy.deepcopy(encoder.electra.config)
    hf_config.num_labels = task["n_outputs"]
    if task["type"] == "regression":
        hf_config.problem_type = "regression"
        described = "regression (1 output)"
    else:
        hf_config.problem_type = "single_label_classification"
        hf_config.id2label = dict(enumerate(task["labels"]))
        hf_config.label2id = {label: i for i, label in enumerate(task["labels"])}
        described = f"{len(task['labels'])} labels ({', '.join(task['labels'])})"
    head = load_file(model_dir / "classifier_head.safetensors")
    _save(ElectraForSequenceClassification, hf_config, {**enc_state, **_renamed(head, CLS_HEAD)}, model_dir, out_dir)
    return (f"  ElectraForSequenceClassification: the fine-tuned encoder and its head, {described}, with the tokenizer\n"
            f"  texts longer than {task['max_seq_len']} tokens were truncated in fine-tuning: pass truncation=True, "
            f"max_length={task['max_seq_len']} to the tokenizer")
