"""electra-kit: fast ELECTRA pretraining of text encoders over pluggable backbones."""

from .threads import set_wait_policy

set_wait_policy()  # before anything imports torch: OpenMP reads its wait policy once, at load

from .backbone import Backbone
from .electra import Electra, ElectraOutput
from .mlm import MaskedLM
from .pretrained import Encoder, load_pretrained
from .registry import create_backbone, list_backbones, register_backbone

__all__ = [
    "Backbone",
    "Electra",
    "ElectraOutput",
    "Encoder",
    "MaskedLM",
    "load_pretrained",
    "create_backbone",
    "list_backbones",
    "register_backbone",
]
__version__ = "0.1.0"
