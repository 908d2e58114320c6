"""The one training loop (pretraining and fine-tuning), its optimizer and schedule, threads,
data parallelism, and the two runners that wire a run together; the fine-tuned model in use
(``classifier``, ``predict``; its MLflow model is in ``serving``)."""
