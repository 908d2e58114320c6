"""A convolutional backbone that electra-kit knows of only through its entry point.

Padded positions are zeroed before every convolution, which is exactly what Conv1d's own zero
padding does at a sequence's end: real tokens never see padding, so the mask is honoured.
"""

import torch
import torch.nn.functional as F
from torch import nn

from electra_kit import Backbone


class ToyConv(Backbone):
    def __init__(self, *, num_tokens, dim, depth, heads=1, max_seq_len=512, emb_dim=None, ff_mult=2, dropout=0.0):
        super().__init__()
        self.num_tokens, self.hidden_dim, self.max_seq_len = num_tokens, dim, max_seq_len
        self.emb_dim = emb_dim or dim
        self.token_emb = nn.Embedding(num_tokens, self.emb_dim)
        self.pos_emb = nn.Embedding(max_seq_len, self.emb_dim)
        self.project = nn.Linear(self.emb_dim, dim)
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel_size=3, padding=1) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, input_ids, attention_mask=None):
        b, n = input_ids.shape
        self.check_seq_len(n)
        keep = torch.ones(b, n, 1, device=input_ids.device) if attention_mask is None else attention_mask[..., None].float()
        x = self.token_emb(input_ids) + self.pos_emb(torch.arange(n, device=input_ids.device))  # (b, n, e)
        x = self.project(x) * keep  # (b, n, d)
        for conv in self.convs:
            x = (x + F.gelu(conv(x.transpose(1, 2)).transpose(1, 2))) * keep
        return self.norm(x)  # (b, n, d)

    def get_token_embedding(self):
        return self.token_emb

    def set_token_embedding(self, module):
        self.token_emb = module

    def get_position_embedding(self):
        return self.pos_emb

    def set_position_embedding(self, module):
        self.pos_emb = module


def build_toyconv(**kwargs):
    return ToyConv(**kwargs)
