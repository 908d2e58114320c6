"""Built-in backbone adapters (installed as ``electra_kit.backbones``), one file per library.

Each is registered through the ``electra_kit.backbones`` entry-point group exactly like a
third-party plugin; see ``electra_kit.testing`` for the conformance suite they all pass.
"""
