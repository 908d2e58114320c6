"""The one training loop (pretraining and fine-tuning), its optimizer and schedule, threads,
data parallelism, and the two runners that wire a run together."""
