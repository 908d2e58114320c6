"""The training engine: the one training loop (pretraining and fine-tuning), its optimizer and schedule,
threads, data parallelism, resume, and the pretraining runner that wires a run together. Fine-tuning, the
application on top of it, is its own package (``electra_kit.finetune``)."""
