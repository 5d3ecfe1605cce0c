"""LumoOmni models built on the Unified Token Interface (``lumo_uti``).

Two model lines (docs/glossary.md, "Track A / Track B"): Track A
(``lumo_model.vlm``), a VLM of frozen towers and a trainable connector; Track
B (``lumo_model.token_lm``), a Qwen3 token LM whose vocabulary is expanded by
the UTI token space, trained rows-only. Shared: ``checkpoint`` (training
checkpoints) and ``errors`` (every exception type).
"""

__all__: list[str] = []
