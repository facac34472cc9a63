"""Tests for the lexical backend: WordNet from its plain files, EDA edits, seeding, the missing-WordNet error."""
import random
import re

import pytest

from marsrm.pool.lexical import APT_COMMAND, OPS, LexicalParaphraser, eda_edit
from marsrm.pool.paraphrase import PoolError

TEXT = ("You could try putting the plant in a sunnier spot and watering it less often, since overwatering is the "
        "most common cause of yellow leaves.")


@pytest.fixture(scope="module")
def lexical():
    paraphraser = LexicalParaphraser()
    yield paraphraser
    paraphraser.close()


def words(text):
    return re.findall(r"[A-Za-z']+", text.lower())


def test_wordnet_synonyms_come_from_the_commonest_senses(lexical):
    assert {"auto", "automobile"} <= set(lexical.wordnet.synonyms("car"))
    assert "car" not in lexical.wordnet.synonyms("car")
    assert lexical.wordnet.synonyms("Car") == lexical.wordnet.synonyms("car")
    assert lexical.wordnet.synonyms("qwzxv") == ()


def test_paraphrase_is_seeded_per_text_and_independent_of_the_batch(lexical):
    other = "The best way to learn a language is to speak it every day."
    together = lexical.paraphrase([TEXT, other], 4, seed=3)
    alone = lexical.paraphrase([other], 4, seed=3)
    assert together[1] == alone[0]
    assert lexical.paraphrase([TEXT], 4, seed=3)[0] == together[0]
    assert lexical.paraphrase([TEXT], 4, seed=4)[0] != together[0]
    assert len(together) == 2 and all(len(row) == 4 for row in together)


def test_output_k_applies_edit_k_in_turn(lexical):
    source = words(TEXT)
    synonym, insert, swap, delete = lexical.paraphrase([TEXT], 4, seed=0)[0]
    assert synonym != TEXT and len(words(synonym)) >= len(source)  # words replaced (a synonym may have 2 words)
    assert len(words(insert)) > len(source)
    assert sorted(words(swap)) == sorted(source) and words(swap) != source
    assert len(words(delete)) < len(source) and set(words(delete)) <= set(source)


@pytest.mark.parametrize("op", OPS)
def test_each_edit_keeps_a_capital_start_and_clean_spacing(lexical, op):
    for seed in range(20):
        out = eda_edit(TEXT, op, random.Random(seed), lexical.wordnet.synonyms, 0.2)
        assert out[:1].isupper()
        assert "  " not in out and " ," not in out and " ." not in out


def test_short_texts_and_texts_without_words_survive(lexical):
    assert lexical.paraphrase(["", "?!", "Hi"], 2, seed=0) == [["", ""], ["?!", "?!"], ["Hi", "Hi"]]


def test_settings_are_the_cache_key_and_refuse_bad_values(lexical):
    assert lexical.settings()["ops"] == list(OPS)
    assert LexicalParaphraser(alpha=0.2).settings() != lexical.settings()
    with pytest.raises(PoolError, match="eda_alpha"):
        LexicalParaphraser(alpha=0)
    with pytest.raises(PoolError, match="eda_ops"):
        LexicalParaphraser(ops=["shout"])
    with pytest.raises(PoolError, match="cannot rewrite"):
        lexical.complete([])


def test_missing_wordnet_names_the_files_and_the_install_command(tmp_path, monkeypatch):
    monkeypatch.delenv("NLTK_DATA", raising=False)
    (tmp_path / "index.noun").write_text("")
    with pytest.raises(PoolError) as err:
        LexicalParaphraser(wordnet_dir=str(tmp_path))
    message = str(err.value)
    assert "data.noun" in message and "index.verb" in message and "index.noun" not in message
    assert APT_COMMAND in message and str(tmp_path) in message
