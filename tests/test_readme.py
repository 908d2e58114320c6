"""The Python examples of the README and docs/ run as written (the electra-pytorch ones with only the import changed)."""

import re
import warnings
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCKS = [b for page in PAGES for b in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)]
RUNNABLE = [b for b in BLOCKS if "import torch" in b]


def test_readme_has_the_examples():
    assert len(RUNNABLE) >= 3
    assert sum("from electra_kit import Electra" in b and "ReformerLM" in b for b in RUNNABLE) == 2


@pytest.mark.parametrize("code", RUNNABLE, ids=[f"block{i}" for i in range(len(RUNNABLE))])
def test_readme_example_runs(code):
    torch.manual_seed(0)
    scope: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(code, "docs", "exec"), scope)
    loss = scope["loss"]
    assert torch.isfinite(loss)
    assert loss.mlm_loss is not None and loss.disc_loss is not None and loss.loss is loss
    params = [p for p in scope.get("trainer", scope.get("model")).parameters()]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    if "nn.Sigmoid()" in code:
        assert any("Sigmoid" in str(w.message) for w in caught)
        disc_logits = loss.disc_logits
        assert (disc_logits < 0).any() or (disc_logits > 1).any(), "the loss must see logits, not probabilities"
