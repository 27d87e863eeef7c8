import pytest

from kbk.data.tokenizers import (
    BpeTokenizer,
    CharTokenizer,
    IdTokenizer,
    WordTokenizer,
    build_tokenizer,
    load_tokenizer,
)
from kbk.errors import DataError

TRAIN = "the cat sat on the mat\nthe dog sat\n\nzebra ant ant dog\n"


def test_word_vocab_keeps_the_most_frequent_training_words_ties_alphabetical():
    # counts: the 3, sat 2, dog 2, ant 2, cat/on/mat/zebra 1
    tok = WordTokenizer.train(TRAIN, max_vocab=3)
    assert tok.itos == ["<unk>", "<eos>", "the", "ant", "dog"]  # ant, dog, sat tie at 2: alphabetical order
    assert tok.vocab_size == 5
    assert tok.encode("the sat zebra\n\n\ndog") == [2, 0, 0, 1, 4, 1]  # blank lines add no <eos>
    assert len(WordTokenizer.train(TRAIN, max_vocab=100).itos) == 2 + 8  # cap above the word count: all words


def test_word_vocab_ignores_text_order_and_counts_only_what_it_is_trained_on():
    shuffled = "\n".join(reversed(TRAIN.splitlines())) + "\n"
    assert WordTokenizer.train(shuffled, max_vocab=3).itos == WordTokenizer.train(TRAIN, max_vocab=3).itos
    tok = WordTokenizer.train(TRAIN, max_vocab=3)
    assert tok.encode("sat sat sat sat") == [0, 0, 0, 0, 1]  # frequent elsewhere is still <unk> here


def test_word_round_trip_on_in_vocab_text_and_options():
    tok = WordTokenizer.train(TRAIN)
    text = "the cat sat\nzebra ant\n"
    assert tok.decode(tok.encode(text)) == text
    plain = WordTokenizer.train(TRAIN, eos=False)
    assert "<eos>" not in plain.itos and plain.decode(plain.encode("the  cat\nsat")) == "the cat sat"
    lower = WordTokenizer.train("The THE the Cat", lowercase=True)
    assert lower.itos[2:] == ["the", "cat"] and lower.encode("tHe cAT") == [2, 3, 1]


def test_char_round_trip_is_exact_and_unknown_characters_map_to_unk():
    tok = CharTokenizer.train("héllo wörld\n\t!")
    assert tok.itos[1:] == sorted(set("héllo wörld\n\t!"))
    text = "wörld\théllo\n\n!"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("xh") == [0, tok.itos.index("h")]
    assert tok.decode(tok.encode("xh")) == "\ufffdh"


def test_bpe_is_lossless_learns_merges_and_is_deterministic():
    text = "The quick brown fox jumps over the lazy dog.  Twice!\n" * 40 + "tabs\tand  spaces \n\n"
    tok = BpeTokenizer.train(text, vocab_size=300)
    assert 256 < tok.vocab_size <= 300
    for s in (text, "unseen words, punctuation; and   odd  spacing\n\nend", " leading space"):
        assert tok.decode(tok.encode(s)) == s
    assert len(tok.encode("the lazy dog")) < len("the lazy dog")  # merges learned from the training text
    assert BpeTokenizer.train(text, vocab_size=300).encode(text) == tok.encode(text)


@pytest.mark.parametrize("kind", ["word", "char", "bpe", "ids"])
def test_save_load_restores_the_same_tokenizer(tmp_path, kind):
    tok = (
        IdTokenizer(50)
        if kind == "ids"
        else build_tokenizer(kind, TRAIN * 5, max_vocab=4, bpe_vocab_size=280)
    )
    sample = "1 49 7" if kind == "ids" else "the cat sat on the mat\nunseen words\n"
    tok.save(tmp_path / "tok.json")
    back = load_tokenizer(tmp_path / "tok.json")
    assert type(back) is type(tok) and back.vocab_size == tok.vocab_size
    assert back.encode(sample) == tok.encode(sample)
    assert back.decode(tok.encode(sample)) == tok.decode(tok.encode(sample))
    assert type(tok).load(tmp_path / "tok.json").vocab_size == tok.vocab_size
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]  # no temp file left behind


def test_bad_tokenizer_settings_and_files_raise_data_errors(tmp_path):
    with pytest.raises(DataError, match="word, char, bpe"):
        build_tokenizer("sentencepiece", TRAIN)
    with pytest.raises(DataError, match="bpe_vocab_size"):
        build_tokenizer("bpe", TRAIN, bpe_vocab_size=100)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="delete it"):
        load_tokenizer(tmp_path / "bad.json")
    CharTokenizer.train("ab").save(tmp_path / "char.json")
    with pytest.raises(DataError, match="'char'"):
        WordTokenizer.load(tmp_path / "char.json")
    with pytest.raises(DataError, match="0, 5"):
        IdTokenizer(5).encode("1 7")
