"""The cheap baseline: WordNet synonym replacement plus EDA's other edits (random insertion, swap, deletion).

WordNet is read straight from its plain files (`index.<pos>`, `data.<pos>`), which Debian's `wordnet-base`
installs under /usr/share/wordnet; no NLTK needed. A word is replaced only by the other lemmas of its most
frequent senses (the first two synsets of its most-tagged part of speech), which keeps the meaning more often than
EDA's "any synonym of any sense". Output k applies edit `ops[k mod len(ops)]`, seeded by (seed, text, k), so
results never depend on batching.
"""
from __future__ import annotations

import os
import random
import re
from functools import lru_cache
from pathlib import Path

from marsrm.pool.paraphrase import Paraphraser, PoolError, Task, derive_seed

POS = ("noun", "verb", "adj", "adv")
OPS = ("synonym", "insert", "swap", "delete")
SENSES = 2  # synonyms come from a word's two commonest senses: one is often the word alone, more drift
APT_COMMAND = "apt-get install -y --no-install-recommends wordnet-base wordnet-sense-index"
DEBIAN_DIR = "/usr/share/wordnet"

# Function words carry the structure of a sentence; replacing them changes meaning more than it paraphrases.
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both but
by can could did do does doing down during each few for from further had has have having he her here hers herself
him himself his how i if in into is it its itself just me more most my myself no nor not now of off on once only or
other our ours ourselves out over own same she should so some such than that the their theirs them themselves then
there these they this those through to too under until up very was we were what when where which while who whom why
will with would you your yours yourself yourselves yes ok okay please also really get got one like
""".split())

_TOKEN = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?|\S|\s+")


def wordnet_dir(directory: str | os.PathLike | None = None) -> Path:
    """The WordNet dictionary folder: `directory`, else $WORDNET_DIR, else Debian's, else NLTK's layout."""
    candidates = [directory] if directory else [os.environ.get("WORDNET_DIR"), DEBIAN_DIR]
    if not directory and os.environ.get("NLTK_DATA"):
        candidates.append(str(Path(os.environ["NLTK_DATA"]) / "corpora" / "wordnet"))
    needed = [f"{kind}.{pos}" for kind in ("index", "data") for pos in POS]
    for candidate in filter(None, candidates):
        if all((Path(candidate) / name).is_file() for name in needed):
            return Path(candidate)
    where = Path(directory or os.environ.get("WORDNET_DIR") or DEBIAN_DIR)
    missing = [name for name in needed if not (where / name).is_file()]
    raise PoolError(f"lexical paraphraser: WordNet not found — {where} lacks {', '.join(missing)}. Install it with "
                    f"`{APT_COMMAND}` (Debian/Ubuntu, as root; `make setup` runs it), or point $WORDNET_DIR or "
                    "setting 'wordnet_dir' at a folder holding WordNet 3.0's index.* and data.* files")


class WordNet:
    """Synonyms from WordNet's plain files: `synonyms(word)` → the other lemmas of the word's commonest senses."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = wordnet_dir(directory)
        self._index: dict[str, list[tuple[int, str, tuple]]] = {}  # lemma → [(tagged senses, pos, offsets)]
        for pos in POS:
            with open(self.directory / f"index.{pos}", encoding="utf-8") as handle:
                for line in handle:
                    if line.startswith(" "):
                        continue  # licence header
                    fields = line.split()
                    p_cnt = int(fields[3])
                    tagged = int(fields[5 + p_cnt])
                    common = tuple(int(o) for o in fields[6 + p_cnt:6 + p_cnt + SENSES])
                    self._index.setdefault(fields[0], []).append((tagged, pos, common))
        self._data = {pos: open(self.directory / f"data.{pos}", "rb") for pos in POS}  # noqa: SIM115

    def identity(self) -> dict:
        return {pos: (self.directory / f"data.{pos}").stat().st_size for pos in POS}

    @lru_cache(maxsize=65536)  # noqa: B019 (one WordNet per process; the cache dies with it)
    def synonyms(self, word: str) -> tuple[str, ...]:
        senses = self._index.get(word.lower())
        if not senses:
            return ()
        _, pos, offsets = max(senses, key=lambda s: s[0])  # most-tagged part of speech; ties: noun first
        lemmas = []
        for offset in offsets:
            handle = self._data[pos]
            handle.seek(offset)
            fields = handle.readline().decode("utf-8").split()
            count = int(fields[3], 16)
            lemmas += [re.sub(r"\(.*\)$", "", fields[4 + 2 * i]).replace("_", " ") for i in range(count)]
        return tuple(dict.fromkeys(lem for lem in lemmas if lem.lower() != word.lower()))

    def close(self) -> None:
        for handle in self._data.values():
            handle.close()


def _is_word(token: str) -> bool:
    return token[:1].isalpha()


def _replaceable(token: str) -> bool:
    return _is_word(token) and len(token) > 2 and token.lower() not in STOPWORDS


def _match_case(word: str, like: str) -> str:
    return word[:1].upper() + word[1:] if like[:1].isupper() else word


def eda_edit(text: str, op: str, rng: random.Random, synonyms, alpha: float) -> str:
    """One EDA edit of `text`: op is "synonym", "insert", "swap" or "delete"; alpha = share of words touched."""
    tokens = _TOKEN.findall(text)
    words = [i for i, t in enumerate(tokens) if _is_word(t)]
    if not words:
        return text
    count = max(1, round(alpha * len(words)))
    if op == "synonym":
        candidates = [i for i in words if _replaceable(tokens[i]) and synonyms(tokens[i])]
        for i in rng.sample(candidates, min(count, len(candidates))):
            tokens[i] = _match_case(rng.choice(synonyms(tokens[i])), tokens[i])
    elif op == "insert":
        candidates = [i for i in words if _replaceable(tokens[i]) and synonyms(tokens[i])]
        new = [rng.choice(synonyms(tokens[rng.choice(candidates)])) for _ in range(count if candidates else 0)]
        for at in sorted((rng.choice(words) for _ in new), reverse=True):  # from the back: indices stay valid
            tokens.insert(at, new.pop() + " ")
    elif op == "swap":
        text_first = tokens[words[0]]
        for _ in range(count if len(words) > 1 else 0):
            a, b = rng.sample(words, 2)
            tokens[a], tokens[b] = tokens[b], tokens[a]
        for i in words[1:]:  # the old first word, now inside the sentence, loses its capital ("I" keeps it)
            if tokens[i] == text_first and tokens[i] != "I" and not tokens[i].isupper():
                tokens[i] = tokens[i].lower()
    elif op == "delete":
        if len(words) > 1:
            drop = {i for i in words if rng.random() < alpha} or {rng.choice(words)}
            if len(drop) == len(words):
                drop.discard(rng.choice(sorted(drop)))
            tokens = [t for i, t in enumerate(tokens) if i not in drop]
    else:
        raise PoolError(f"setting 'eda_ops': unknown edit '{op}' (choose from {', '.join(OPS)})")
    out = "".join(tokens)
    out = re.sub(r"^[\s,;:]+", "", out)
    out = re.sub(r"[ \t]{2,}", " ", out)
    out = re.sub(r" +([,.;:!?])", r"\1", out).strip()
    return _match_case(out, text) if text[:1].isupper() else out


class LexicalParaphraser(Paraphraser):
    """WordNet synonyms + EDA edits: thousands of texts a second, no model; meaning-preserving only roughly."""

    kind = "lexical"
    can_rewrite = False

    def __init__(self, *, alpha: float = 0.1, ops=OPS, wordnet_dir: str | None = None):
        super().__init__()
        if not 0.0 < alpha <= 1.0:
            raise PoolError(f"setting 'eda_alpha': must be in (0, 1] (got {alpha})")
        self.ops = tuple(ops)
        unknown = [op for op in self.ops if op not in OPS]
        if not self.ops or unknown:
            raise PoolError(f"setting 'eda_ops': {', '.join(unknown) or 'empty'}; choose from {', '.join(OPS)}")
        self.alpha = alpha
        self.wordnet = WordNet(wordnet_dir)  # fails now, naming the missing files, before any work

    def settings(self) -> dict:
        return {"kind": self.kind, "wordnet": self.wordnet.identity(), "alpha": self.alpha, "ops": list(self.ops)}

    def paraphrase(self, texts, n, seed, on_done=None):
        if n < 1:
            raise PoolError(f"setting 'n': must be at least 1 (got {n})")
        results = []
        for row, text in enumerate(texts):
            outputs = [eda_edit(text, self.ops[k % len(self.ops)], random.Random(derive_seed(seed, text, k)),
                                self.wordnet.synonyms, self.alpha) for k in range(n)]
            self.tokens += sum(len(o.split()) for o in outputs)
            results.append(outputs)
            if on_done is not None:
                on_done(row, outputs)
        return results

    def complete(self, tasks: list[Task], on_done=None) -> list[str]:
        raise PoolError("the lexical paraphraser cannot rewrite; set refine_backend to local or openai")

    def close(self) -> None:
        self.wordnet.close()
