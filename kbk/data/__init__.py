"""Data sources (synthetic, local text, WikiText-2), tokenisers and batching.

`load_corpus(source, **options)` returns a `Corpus` (train/val token ids, vocab size, tokeniser and, for the
synthetic source, the exact loss floor; `Corpus.test()` reads the test split, where the source has one, on demand);
`TokenBatches` cuts its streams into training and evaluation batches.
`datasets` and `tokenizers` are imported only by the code paths that need them.
"""

from kbk.data.batching import TokenBatches, num_windows, window_starts
from kbk.data.corpus import DEFAULT_CACHE_DIR, Corpus, load_corpus
from kbk.data.synthetic import HMM, load_synthetic
from kbk.data.text import load_text
from kbk.data.tokenizers import (
    BpeTokenizer,
    CharTokenizer,
    IdTokenizer,
    WordTokenizer,
    build_tokenizer,
    load_tokenizer,
)
from kbk.data.wikitext2 import load_wikitext2

__all__ = [
    "DEFAULT_CACHE_DIR",
    "HMM",
    "BpeTokenizer",
    "CharTokenizer",
    "Corpus",
    "IdTokenizer",
    "TokenBatches",
    "WordTokenizer",
    "build_tokenizer",
    "load_corpus",
    "load_synthetic",
    "load_text",
    "load_tokenizer",
    "load_wikitext2",
    "num_windows",
    "window_starts",
]
