"""Finished models as MLflow Logged Models, registrable and servable with ``mlflow models serve``: the pretrained
encoder (``encoder``: texts -> mean-pooled vectors) and the fine-tuned classifier (``classifier``: texts -> labels).
Each module is also its model's code ("models from code"), loaded by MLflow through electra_kit's public API."""
