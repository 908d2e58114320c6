"""The pretrained encoder as an MLflow Logged Model: registrable, and servable with ``mlflow models serve``.

This file is also the model's code (MLflow "models from code"): MLflow copies it into the Logged Model and runs
it at load time, so nothing in the model is a pickle and the served class is the one logged. It therefore imports
only ``electra_kit``'s public API, absolutely.

Serving: ``mlflow models serve -m models:/<model_id> --env-manager local`` answers a DataFrame with a ``text``
column (``{"dataframe_split": {"columns": ["text"], "data": [["a sentence"], ...]}}``) with one embedding per
text: the **mean of the encoder's hidden states over the text's real tokens** (padding left out), a list of
``hidden_dim`` floats. Texts longer than the model's ``max_seq_len`` tokens are cut. A Reformer encoder with
LSH attention hashes anew at every call, so its embeddings vary slightly between calls (README, Backbones).
"""

from __future__ import annotations

import contextlib
import os
import warnings

import mlflow

BATCH = 32  # texts per forward: bounds the memory of a large request


class EncoderEmbeddings(mlflow.pyfunc.PythonModel):
    """pyfunc over an electra-kit model folder: texts in, mean-pooled encoder vectors out."""

    _skip_type_hint_validation = True  # the signature is given at log time (MLflow would warn about type hints)

    def load_context(self, context):
        from electra_kit import load_pretrained

        self.encoder = load_pretrained(context.artifacts["model"])

    def predict(self, context, model_input, params=None):
        import numpy as np
        import torch

        texts = [str(t) for t in (model_input["text"] if hasattr(model_input, "columns") else model_input)]
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), BATCH):
                hidden, mask = self.encoder.encode(texts[i:i + BATCH])  # (b, n, d), (b, n)
                keep = mask[..., None].float()  # (b, n, 1)
                out.append((hidden * keep).sum(1) / keep.sum(1).clamp(min=1))  # (b, d)
        return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, self.encoder.hidden_dim), np.float32)


def log_encoder_model(model_dir, *, tracking_uri: str, run_id: str, step: int, name: str = "encoder") -> str:
    """Log ``model_dir`` as a pyfunc Logged Model of run ``run_id``, linked to the run's metrics at ``step`` (the
    final ones) and carrying the run's params; returns its ``models:/<model_id>`` URI."""
    from importlib.metadata import version
    from pathlib import Path

    import numpy as np
    from mlflow.models import Model, ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    from ..modelfolder.pretrained import read_config

    hidden = read_config(Path(model_dir))["hidden_dim"]
    signature = ModelSignature(inputs=Schema([ColSpec("string", "text")]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, hidden))]))
    requirements = [f"{p}=={version(p)}" for p in ("electra-kit", "torch", "mlflow")]  # no inference run at log time
    experiment_id = mlflow.MlflowClient(tracking_uri).get_run(run_id).info.experiment_id  # else: MLflow's "Default"
    with model_logging(tracking_uri, MLFLOW_EXPERIMENT_ID=experiment_id):
        # Model.log is what mlflow.pyfunc.log_model calls, with the run given instead of an active one (so the
        # finished run is not reopened) and the step whose metrics the model carries
        info = Model.log(artifact_path=None, name=name, flavor=mlflow.pyfunc, python_model=__file__,
                         artifacts={"model": str(model_dir)}, signature=signature, pip_requirements=requirements,
                         run_id=run_id, step=step)
    return info.model_uri


@contextlib.contextmanager
def model_logging(tracking_uri: str, **env: str):
    """While a CLI logs a Logged Model: ``tracking_uri`` as MLflow's store, its progress bar off, and its advice for
    interactive use (type hints, an input example: our models carry a signature) kept off the console."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with (_use_tracking_uri(tracking_uri), warnings.catch_warnings(),
          _env(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false", **env)):
        warnings.simplefilter("ignore", UserWarning)
        yield


@contextlib.contextmanager
def _env(**values):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def log_run_encoder(tracker, model_dir, step: int, say=print) -> str | None:
    """At the end of a tracked run: the Logged Model, or one line saying why not (never an error: the run is done)."""
    import logging
    import time

    if tracker is None or tracker.run_id is None:
        return None
    say("logging the encoder to MLflow as a Logged Model ...")
    start = time.monotonic()
    try:
        uri = log_encoder_model(model_dir, tracking_uri=tracker.tracking_uri, run_id=tracker.run_id, step=step)
    except Exception as exc:  # noqa: BLE001 - the model folder is saved; MLflow's copy is a convenience
        from ..tracking.store import describe

        logging.getLogger("electra_kit.tracking").warning("MLflow: the encoder was not logged as a Logged Model (%s); "
                                                          "the model folder is %s", describe(exc), model_dir)
        return None
    say(f"Logged Model {uri} ({time.monotonic() - start:.1f} s); serve it with: "
        f"MLFLOW_TRACKING_URI={tracker.tracking_uri} mlflow models serve -m {uri} --env-manager local")
    return uri


if not __package__:  # run by MLflow from the Logged Model's copy of this file
    mlflow.models.set_model(EncoderEmbeddings())
