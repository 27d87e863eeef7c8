"""Data sources (synthetic, local text, WikiText-2), tokenisers and batching.

`load_corpus(source, **options)` (the options are the fields of the source's settings dataclass: `SyntheticConfig`,
`TextConfig`, `WikiText2Config`) returns a `Corpus` (train/val token ids, vocab size, tokeniser and, for the
synthetic source, the exact loss floor; `Corpus.test()` reads the test split, where the source has one, on demand);
`TokenBatches` cuts its streams into training and evaluation batches.
`datasets` and `tokenizers` are imported only by the code paths that need them.
"""

from kbk.data.batching import TokenBatches, num_windows, window_starts
from kbk.data.corpus import Corpus, load_corpus
from kbk.data.synthetic import HMM, SyntheticConfig, load_synthetic
from kbk.data.text import TextConfig, load_text
from kbk.data.tokenizers import (
    BpeTokenizer,
    CharTokenizer,
    IdTokenizer,
    WordTokenizer,
    build_tokenizer,
    load_tokenizer,
)
from kbk.data.wikitext2 import WikiText2Config, load_wikitext2

__all__ = [
    "HMM",
    "BpeTokenizer",
    "CharTokenizer",
    "Corpus",
    "IdTokenizer",
    "SyntheticConfig",
    "TextConfig",
    "TokenBatches",
    "WikiText2Config",
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
