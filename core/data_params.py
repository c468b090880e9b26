"""The `data:` section of params.yaml: corpus, ingest, chunking (and its selection), datasets, questions.

Defined beside core/config.py for size, as core/serving_params.py and core/retrieval_params.py are; `Params`
there holds it, and core.config re-exports every class, so `from core.config import ChunkParams` keeps working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from core.sections import Section


class SampleCorpusParams(Section):
    """How the default corpus (CPython's own documentation) is rendered."""

    include_topics: bool = True
    """Language Reference topics from `pydoc_data.topics`."""
    include_modules: bool = True
    """Standard-library module documentation rendered by `pydoc`."""
    max_topics: int | None = Field(default=None, ge=1)
    """Cap on topics (None = all); tiny profiles use a handful."""
    max_modules: int | None = Field(default=None, ge=1)
    """Cap on modules (None = all)."""
    max_chars_per_doc: int = Field(default=24_000, ge=1_000)
    """Very long module pages (e.g. `os`) are cut here so one module cannot dominate the corpus."""


class IngestParams(Section):
    extensions: tuple[str, ...] = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf")
    """File types read from the corpus folder; others are skipped and counted in the report."""
    max_file_mb: float = Field(default=20.0, gt=0)
    """Larger files are skipped (with a reason in the report) rather than read into memory."""

    @field_validator("extensions")
    @classmethod
    def _dotted(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [e for e in v if not e.startswith(".")]
        if bad:
            raise ValueError(f"extensions must start with a dot, e.g. '.md' (got {bad})")
        return tuple(e.lower() for e in v)


class ChunkParams(Section):
    method: Literal["tokens", "chars"] = "tokens"
    """`tokens`: split at headings, then paragraphs, lines, sentences and words, merged up to `chunk_tokens`
    (data/chunk.py). `chars`: fixed windows of `chunk_chars` characters, `overlap_chars` shared: the naive
    recipe, kept as a candidate so that it is what gets served when nothing beats it."""
    chunk_tokens: int = Field(default=200, ge=16, le=512)
    """Target chunk size in embedder tokens (MiniLM's window is 256 word pieces)."""
    overlap_tokens: int = Field(default=32, ge=0)
    """Tokens shared by neighbouring chunks of one section."""
    min_chunk_tokens: int = Field(default=8, ge=1)
    """Chunks shorter than this (after splitting) are dropped: they carry no retrievable content."""
    chunk_chars: int = Field(default=1000, ge=50)
    overlap_chars: int = Field(default=200, ge=0)
    """`chars` windows: size and overlap in characters."""

    @model_validator(mode="after")
    def _overlap_smaller(self) -> ChunkParams:
        if self.overlap_tokens >= self.chunk_tokens:
            raise ValueError(
                f"overlap_tokens ({self.overlap_tokens}) must be smaller than chunk_tokens ({self.chunk_tokens})"
            )
        if self.overlap_chars >= self.chunk_chars:
            raise ValueError(
                f"overlap_chars ({self.overlap_chars}) must be smaller than chunk_chars ({self.chunk_chars})"
            )
        return self

    @property
    def name(self) -> str:
        """`tokens-200-32` or `chars-1000-200`: how reports and metrics name this chunking."""
        if self.method == "chars":
            return f"chars-{self.chunk_chars}-{self.overlap_chars}"
        return f"tokens-{self.chunk_tokens}-{self.overlap_tokens}"


class ChunkingParams(Section):
    """Chunk size and overlap chosen by measurement (stage `select_chunking`, evaluation/select_chunking.py)."""

    grid: tuple[dict[str, str | int], ...] = ()
    """Candidate chunkings, each some `data.chunk` keys laid over `data.chunk`; empty: `data.chunk` alone."""
    select_by: Literal["dense", "lexical", "hybrid"] = "hybrid"
    """The mode whose score (`gate.embedder_metric`) picks the winner; every mode is reported."""
    max_documents: int = Field(default=40, ge=1)
    """Held-in documents the candidates are compared on (a seeded sample): each candidate embeds their chunks."""
    max_questions: int = Field(default=300, ge=1)

    def candidates(self, base: ChunkParams) -> list[ChunkParams]:
        """The grid over `base`, in order, without repeats.

        Raises:
            ValueError: an entry names an unknown key or an invalid value.
        """
        out: list[ChunkParams] = []
        for i, entry in enumerate(self.grid or ({},)):
            try:
                c = ChunkParams.model_validate(base.model_dump() | dict(entry))
            except ValidationError as e:
                raise ValueError(f"data.chunking.grid[{i}] {dict(entry)}: {e.errors()[0]['msg']}") from None
            if c not in out:
                out.append(c)
        return out


class DatasetParams(Section):
    eval_fraction: float = Field(default=0.15, gt=0, lt=1)
    """Share of documents held out for evaluation (the split is by document, never by chunk)."""
    max_eval_queries: int = Field(default=300, ge=1)
    max_embed_pairs: int | None = Field(default=None, ge=1)
    """Cap on embedder training pairs (None = all)."""
    max_chat_train: int = Field(default=2000, ge=1)
    max_chat_eval: int = Field(default=64, ge=1)
    chat_passages: int = Field(default=3, ge=1, le=20)
    """Numbered passages per chat example: the one holding the answer and BM25-mined distractors from other
    documents (data/grounded.py)."""
    unanswerable_fraction: float = Field(default=0.15, ge=0, lt=1)
    """Share of chat examples given distractors only, answered with `core.prompts.NOT_IN_CONTEXT`."""
    tool_fraction: float = Field(default=0.2, ge=0, lt=1)
    """Share of the answerable chat training examples that teach the tool-call format (data/grounded.py)."""


class QuestionParams(Section):
    """Held-out questions for the gate: the held-out documents' own descriptive sentences (data/questions.py)."""

    min_words: int = Field(default=6, ge=2)
    max_words: int = Field(default=30, ge=3)
    """Sentences outside min..max words are not asked (too vague, or a paragraph in disguise)."""
    min_plain_fraction: float = Field(default=0.8, gt=0, le=1)
    """Share of a sentence's words that must be plain words (not identifiers, numbers or ALL-CAPS)."""
    max_per_document: int = Field(default=8, ge=1)
    """At most this many questions about one document, so long documents do not dominate the score."""
    max_questions: int = Field(default=300, ge=1)
    train_per_document: int = Field(default=8, ge=1)
    """Embedder training: questions about one training document at most."""
    max_train_pairs: int = Field(default=2000, ge=1)
    """Embedder training: question -> passage pairs at most (the training documents only)."""

    @model_validator(mode="after")
    def _range(self) -> QuestionParams:
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) must not exceed max_words ({self.max_words})")
        return self


class DataParams(Section):
    corpus_dir: str = "artifacts/corpus"
    """Folder of documents (relative to the project root, or absolute). Point it at your own documents."""
    sample_corpus: SampleCorpusParams = SampleCorpusParams()
    ingest: IngestParams = IngestParams()
    chunk: ChunkParams = ChunkParams()
    chunking: ChunkingParams = ChunkingParams()
    datasets: DatasetParams = DatasetParams()
    questions: QuestionParams = QuestionParams()

    @model_validator(mode="after")
    def _grid_valid(self) -> DataParams:
        self.chunking.candidates(self.chunk)  # a bad grid entry fails here, at load, naming its index
        return self

    def corpus_path(self) -> Path:
        from core.config import PROJECT_ROOT  # here, not at the top: core.config imports this module

        p = Path(self.corpus_dir)
        return p if p.is_absolute() else PROJECT_ROOT / p
