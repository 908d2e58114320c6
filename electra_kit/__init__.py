"""electra-kit: fast ELECTRA pretraining of text encoders over pluggable backbones."""

from .threads import set_wait_policy

set_wait_policy()  # before anything imports torch: OpenMP reads its wait policy once, at load

from .backbone import Backbone
from .modelfolder.hf_auto import install as _install_hf_auto
from .modelfolder.pretrained import Encoder, load_pretrained
from .objectives.base import Objective
from .objectives.electra import Electra, ElectraOutput
from .objectives.mlm import MaskedLM
from .registry import create_backbone, list_backbones, list_objectives, register_backbone, register_objective

_install_hf_auto()  # transformers' AutoModel & co. load model folders, registered once transformers is imported

__all__ = [
    "Backbone",
    "Electra",
    "ElectraOutput",
    "Encoder",
    "MaskedLM",
    "Objective",
    "load_pretrained",
    "load_classifier",
    "create_backbone",
    "list_backbones",
    "register_backbone",
    "list_objectives",
    "register_objective",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "load_classifier":  # on first use: fine-tuning's imports (scikit-learn, SciPy) cost seconds
        from .finetune.classifier import load_classifier

        return load_classifier
    raise AttributeError(f"module 'electra_kit' has no attribute {name!r}")
