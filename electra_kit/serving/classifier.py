"""The fine-tuned classifier as an MLflow model.

:class:`ClassifierPyfunc` is an ``mlflow.pyfunc.PythonModel`` over a kept model folder (finetune/classifier.py): it
answers a DataFrame with a ``text`` column (and ``text_pair`` for a pair task) with one row per text,
``label``, ``score`` and ``scores`` (label -> probability); ``score`` alone for regression.
:func:`log_classifier` logs a folder as an MLflow 3 Logged Model of the fine-tuning run, with the kept seed's
metrics linked to it, so the UI lists it with its scores, it can be registered, and served:

    mlflow models serve -m models:/<model_id> --env-manager local -p 5001
    curl 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \\
        -d '{"dataframe_records": [{"text": "Who wrote Hamlet?"}]}'

The name says "classifier": the pretrained encoder has its own pyfunc beside this one.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow
import pandas as pd

from .encoder import model_logging

logger = logging.getLogger("electra_kit.tracking")
ARTIFACT = "model"  # the key of the model folder in the pyfunc's artifacts
MODEL_CODE = """import mlflow

from electra_kit.serving.classifier import ClassifierPyfunc

mlflow.models.set_model(ClassifierPyfunc())
"""


class ClassifierPyfunc(mlflow.pyfunc.PythonModel):
    """Texts in a DataFrame (``text``, and ``text_pair`` for pair tasks) -> labels and scores."""

    def load_context(self, context) -> None:
        from electra_kit import load_classifier

        self.classifier = load_classifier(context.artifacts[ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:  # the hint: MLflow asks
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame({"text": list(model_input)})
        if "text" not in frame.columns:
            raise ValueError(f"the input needs a 'text' column; it has {list(frame.columns)}")
        pairs = frame["text_pair"].astype(str).tolist() if "text_pair" in frame.columns else None
        answers = self.classifier.predict(frame["text"].astype(str).tolist(), pairs)
        return pd.DataFrame(answers)


def _signature(classifier_config: dict):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    task = classifier_config["task"]
    inputs = [ColSpec("string", "text")]
    if (task.get("columns") or {}).get("pair"):
        inputs.append(ColSpec("string", "text_pair"))
    outputs = [ColSpec("double", "score")]
    if task["type"] != "regression":
        outputs.insert(0, ColSpec("string", "label"))
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def _requirements(backbone: str) -> list[str]:
    """Pinned as installed, so that logging need not load the model in a subprocess to infer them."""
    from ..registry import backbone_entries

    names = ["electra-kit", "torch", "tokenizers", "safetensors", "mlflow", "pandas"]
    source = next((e.source for e in backbone_entries() if e.name == backbone), "")
    if source and not source.startswith("electra-kit ") and " " in source:  # a plugin's distribution
        names.append(source.split()[0])
    out = []
    for name in names:
        with contextlib.suppress(PackageNotFoundError):
            out.append(f"{name}=={version(name)}")
    return out


def log_classifier(model_dir: str | Path, *, tracking_uri: str, run_id: str, metrics: dict[str, float],
                   name: str = "classifier") -> str:
    """Log ``model_dir`` as a Logged Model of run ``run_id`` with ``metrics`` linked to it; its model id."""
    from ..modelfolder.pretrained import read_config

    config = read_config(model_dir)
    with tempfile.TemporaryDirectory(prefix="electra-kit-pyfunc-") as tmp, model_logging(tracking_uri), \
            mlflow.start_run(run_id=run_id):
        code = Path(tmp) / "classifier_model.py"  # a model from code: no pickle in the model, as in our folders
        code.write_text(MODEL_CODE)
        info = mlflow.pyfunc.log_model(
            name=name, python_model=str(code), artifacts={ARTIFACT: str(model_dir)},
            signature=_signature(config), pip_requirements=_requirements(config["encoder"]["name"]),
            tags={"electra_kit.kind": "finetuned-classifier", "electra_kit.task": config["task"]["type"]},
        )
        mlflow.log_metrics(metrics, model_id=info.model_id)
    return info.model_id


def log_kept_model(tracker, kept: dict) -> str | None:
    """``finetune``'s kept model (``results["kept_model"]``) as the run's Logged Model; a warning, never an
    error, when the store cannot take it (the folder on disk is the model)."""
    if tracker is None:
        return None
    if tracker.run_id is None:
        logger.warning("MLflow has not confirmed this run; the model stays in %s only", kept["path"])
        return None
    metrics = {f"eval/{k.removeprefix('eval_')}": v for k, v in kept["metrics"].items()}
    metrics.update({k.replace("val_", "val/", 1): v for k, v in kept.items() if k.startswith("val_")})
    try:
        return log_classifier(kept["path"], tracking_uri=tracker.tracking_uri, run_id=tracker.run_id, metrics=metrics)
    except Exception as exc:  # noqa: BLE001 - the run's results are on disk; MLflow is a copy
        logger.warning("could not log the model to MLflow at %s (%s); it stays in %s", tracker.tracking_uri,
                       exc, kept["path"])
        return None
