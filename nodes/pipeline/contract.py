"""FASHN Model Swap's parameter ranges, shared by the pipeline, the nodes and the HTTP API (no imports,
so the API can check a request without loading the pipeline)."""

SEED_MAX = 2**32 - 1
MODES = ("match_reference", "match_base")  # face_reference_mode values, the default first
