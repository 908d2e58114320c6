"""A third pretraining objective that electra-kit knows of only through its entry point.

Random-token detection: a fraction of the real tokens is replaced by uniformly random ones (no
generator) and the encoder learns, per token, whether it was replaced. It uses nothing of
electra-kit but the Objective interface, the Noise it is handed and a registry backbone.
"""

import torch
import torch.nn.functional as F
from torch import nn

import gin
from electra_kit.objectives.base import Objective


class DetectionOutput:
    def __init__(self, loss, total, count, accuracy):
        self.loss, self.loss_terms, self.accuracy = loss, [(1.0, total, count)], accuracy

    def metrics(self):
        return {"loss": self.loss.detach(), "detect_acc": self.accuracy}


@gin.configurable
class RandomTokenDetection(Objective):
    def __init__(self, encoder, *, pad_token_id: int = 0, first_token_id: int = 5, replace_prob: float = 0.15):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.hidden_dim, 1)
        self.pad_token_id, self.first_token_id, self.replace_prob = pad_token_id, first_token_id, replace_prob

    @classmethod
    def special_token_kwargs(cls, special_ids):
        return {"pad_token_id": special_ids["pad"], "first_token_id": 1 + max(special_ids.values())}

    def folder_parts(self):
        return {"encoder_head": self.head}

    def forward(self, input_ids, attention_mask=None, *, return_output=False, noise=None):
        if attention_mask is None:
            attention_mask = input_ids != self.pad_token_id
        real = attention_mask.bool() & (input_ids >= self.first_token_id)  # (b, n) never special tokens
        b, n = input_ids.shape
        replace = (noise.rand((b, n), input_ids.device) < self.replace_prob) & real
        span = self.encoder.num_tokens - self.first_token_id
        random_ids = self.first_token_id + noise.randint(span, (b, n), input_ids.device)
        corrupted = torch.where(replace, random_ids, input_ids)
        labels = (corrupted != input_ids).float()  # (b, n)
        logits = self.head(self.encoder(corrupted, attention_mask=attention_mask.bool())).squeeze(-1)  # (b, n)
        weight = attention_mask.float()
        total = (F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none") * weight).sum()
        count = weight.sum().clamp(min=1.0)
        accuracy = (((logits > 0).float() == labels).float() * weight).sum().detach() / count
        out = DetectionOutput(total / count, total, count, accuracy)
        return out if return_output else out.loss

    @torch.no_grad()
    def evaluate(self, batches):
        from electra_kit.objectives.noise import Noise

        sums, n = {}, 0
        for batch in batches:
            out = self(batch["input_ids"], batch["attention_mask"], return_output=True, noise=Noise())
            for key, value in out.metrics().items():
                sums[key] = sums.get(key, 0.0) + float(value)
            n += 1
        return {key: value / max(n, 1) for key, value in sums.items()}
