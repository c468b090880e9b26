"""Data stages: sample corpus -> ingest -> chunk -> datasets (each a `python -m data.<stage>` module)."""
