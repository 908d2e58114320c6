"""`electra-kit` with an experimental fine-tuning head that reads a centred, standardised pooled vector.

A pretrained encoder's pooled vectors of different texts are nearly parallel (bench/anisotropy.py: mean cosine
0.67-0.98 against random init's 0.3), so a fresh head sees mostly the part every text shares. This wrapper puts a
BatchNorm1d without affine parameters (batch statistics in training, running ones in evaluation) in front of
ELECTRA's head and then runs the command line unchanged, to test whether that geometry is what slows a pretrained
encoder's fine-tuning on small data (bench/RESULTS.md, issue 29 section 16: it is not). Not the kit's recipe.

    python bench/centred_head.py finetune --model runs/pretrain_x/model --train bench/data/amazon_train.tsv \\
        --eval bench/data/amazon_test.tsv --text-column text --label-column label --seeds 3
"""

from __future__ import annotations

import sys

from torch import nn

import electra_kit.finetune.model as finetune_model

ElectraHead = finetune_model.ClassificationHead


class CentredHead(ElectraHead):
    def __init__(self, hidden_dim: int, n_outputs: int, dropout: float):
        super().__init__(hidden_dim, n_outputs, dropout)
        self.norm = nn.BatchNorm1d(hidden_dim, affine=False)

    def forward(self, first):  # (b, d): centred and scaled per dimension, in fp32 under autocast
        return super().forward(self.norm(first.float()).to(first.dtype))


if __name__ == "__main__":
    finetune_model.ClassificationHead = CentredHead  # SequenceModel looks the head up at construction
    from electra_kit.cli import main

    sys.exit(main(sys.argv[1:]))
