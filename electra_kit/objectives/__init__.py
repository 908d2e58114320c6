"""The Objective interface and what implements it (ELECTRA, masked LM), with their heads,
masking, randomness and metrics. Never imports training, tracking, checkpoints or distributed."""
