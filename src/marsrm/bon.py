"""Best-of-N with a gold judge: what a reward model is worth downstream.

A policy LM samples N responses to each held-out prompt; each reward model under test picks its best
of the first N (so the picks are nested as N grows); a gold reward model, trained on other prompts,
scores every pick. Two read-outs, each with a bootstrap interval over prompts (and over seeds, when a
model is given as several training runs, e.g. one per seed):

- the over-optimisation curve: mean gold reward of each model's pick for N = 1, 2, 4, 8, 16;
- win rates: how often model A's pick beats model B's under gold (a tie — the same sample, or equal gold
  reward — counts one half), with the paired difference in gold reward beside it.

Samples are drawn once per (prompt, sample index), each row from its own seeded random stream, and cached
on disk (`samples.jsonl`, rewritten atomically after every batch), so an interrupted run resumes and
several reward models are compared on exactly the same samples. `best_of_n(samples, reward_models,
gold, ns)` is the library call; `marsrm.commands.bon` is `marsrm bon`. docs/DOWNSTREAM.md has the recipe.

Long because sampling, the sample cache, training-prompt provenance and the read-outs are one experiment;
its language-model machinery is in lm.py, its statistics in metrics.py and its command in commands/bon.py.
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from marsrm import metrics
from marsrm.config import ConfigError, load_yaml
from marsrm.data import DataError, load_pairs, to_hh_text
from marsrm.io import atomic_write, atomic_write_json, atomic_write_text
from marsrm.pipeline import DataSettings, load_split
from marsrm.record import changed_settings

DEFAULT_NS = [1, 2, 4, 8, 16]
RUN_CONFIG = "config.yaml"  # what `marsrm train` and `marsrm run` write beside `model/`


def check_ns(ns) -> list[int]:
    """The N values, sorted and unique; ConfigError for an empty list or an N below 1."""
    if not ns:
        raise ConfigError("setting 'ns': give at least one N")
    bad = [n for n in ns if int(n) < 1]
    if bad:
        raise ConfigError(f"setting 'ns': N must be at least 1 (got {bad[0]})")
    return sorted({int(n) for n in ns})


def model_names(entries: list[str]) -> dict[str, list[str]]:
    """{name: [directory, ...]} from NAME=DIR or DIR entries; a bare DIR is named after its run (…/NAME/model).

    One name may hold several runs of the same recipe (seeds): NAME=DIR repeated, or a DIR with glob
    characters (expanded, sorted). Two bare DIRs that would get the same name are refused.
    """
    named: dict[str, list[str]] = {}
    bare = set()
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep:
            path = entry
            folder = Path(entry.rstrip("/"))
            name = folder.parent.name if folder.name == "model" and folder.parent.name else folder.name
        if not name or not path:
            raise ConfigError(f"setting 'models': cannot read '{entry}' (expected NAME=DIR or DIR)")
        if name in named and (not sep or name in bare):
            raise ConfigError(f"setting 'models': two models are named '{name}'; name them with NAME=DIR")
        if not sep:
            bare.add(name)
        paths = [path]
        if glob.has_magic(path):
            paths = sorted(glob.glob(path))
            if not paths:
                raise ConfigError(f"setting 'models': '{path}' (model '{name}') matches no directory")
        named.setdefault(name, []).extend(paths)
    return named


# ---------------------------------------------------------------------------------------------
# Prompts and overlap with training data
# ---------------------------------------------------------------------------------------------

def prompt_key(prompt) -> str:
    """A stable key for a prompt (chat messages): equal up to whitespace means the same key."""
    canonical = [[m["role"], " ".join(str(m["content"]).split())] for m in prompt]
    return hashlib.sha256(json.dumps(canonical, ensure_ascii=False).encode("utf-8")).hexdigest()[:24]


def held_out_prompts(config: DataSettings, limit: int | None = None, echo=print) -> list[tuple[str, tuple]]:
    """(id, prompt) of the held-out pairs of the seeded split, one per distinct prompt, the first `limit`."""
    split, _ = load_split(config, echo)
    seen, prompts = set(), []
    for pair in split.eval:
        key = prompt_key(pair.prompt)
        if key not in seen:
            seen.add(key)
            prompts.append((pair.id, pair.prompt))
    return prompts[:limit] if limit is not None else prompts


def training_prompts(model_dir: str | os.PathLike) -> set[str] | None:
    """Prompt keys of the pairs a marsrm run trained on (train and validation), rebuilt from the run's
    `config.yaml` beside `model_dir`; None when there is no such file (the training data is unknown)."""
    run_config = Path(model_dir).resolve().parent / RUN_CONFIG
    if not run_config.is_file():
        return None
    values = load_yaml(run_config, "the run's config") or {}
    fields = {f.name for f in dataclasses.fields(DataSettings)}
    if not isinstance(values, dict) or "data" not in values:
        return None
    settings = DataSettings(**{k: v for k, v in values.items() if k in fields})
    # runs that differ only in their training seed share a split: rebuild it once for all of them
    settings = dataclasses.replace(settings, seed=settings.data_seed, split_seed=None)
    try:
        return _split_prompts(json.dumps(dataclasses.asdict(settings), sort_keys=True))
    except (DataError, ConfigError, FileNotFoundError) as err:
        raise ConfigError(f"{run_config}: cannot rebuild the training split of {model_dir} to check overlap "
                          f"({err}); pass the training pairs with --gold-exclude FILE, or --no-check-gold") from err


@functools.lru_cache(maxsize=16)
def _split_prompts(settings_json: str) -> frozenset[str]:
    """Prompt keys of the train and validation pairs of the split that these DataSettings (as JSON) draw."""
    split, _ = load_split(DataSettings(**json.loads(settings_json)), echo=lambda *_: None)
    return frozenset(prompt_key(p.prompt) for p in split.train + split.val)


def forget_cached_prompts() -> None:
    """Drop the prompts read from run settings so far (the data files may have changed since)."""
    _split_prompts.cache_clear()


def pair_prompts(source: str) -> set[str]:
    """Prompt keys of every pair in a data source (for --gold-exclude)."""
    return {prompt_key(p.prompt) for p in load_pairs(source).pairs}


def remove_overlap(prompts: list[tuple[str, tuple]], trained: dict[str, set[str]], overlap: str = "drop",
                   echo=print) -> tuple[list[tuple[str, tuple]], dict[str, list[str]]]:
    """Drop (or refuse, overlap="refuse") prompts some model was trained on.

    trained: {model name: prompt keys it was trained on}. Returns (kept prompts, {name: dropped prompt ids}).
    """
    report = {}
    for name, keys in trained.items():
        hits = [pid for pid, prompt in prompts if prompt_key(prompt) in keys]
        if hits:
            report[name] = hits
    if report and overlap == "refuse":
        name, hits = next(iter(report.items()))
        raise ConfigError(f"{len(hits)} evaluated prompt(s) are among the training prompts of '{name}' (first: "
                          f"{hits[0]}); choose other prompts, or pass --overlap drop to remove them")
    dropped = {pid for hits in report.values() for pid in hits}
    for name, hits in report.items():
        echo(f"overlap: {len(hits)} prompt(s) were in the training data of '{name}', dropped: "
             + ", ".join(hits[:10]) + (" …" if len(hits) > 10 else ""))
    return [(pid, prompt) for pid, prompt in prompts if pid not in dropped], report


# ---------------------------------------------------------------------------------------------
# The policy and the sample cache
# ---------------------------------------------------------------------------------------------

def row_seed(seed: int, key: str, index: int) -> int:
    """The random stream of sample `index` of the prompt with key `key`: independent of batch and order."""
    digest = hashlib.sha256(f"{seed}\x00{key}\x00{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class Policy:
    """A causal LM that samples responses to chat prompts, each row from its own seeded random stream.

    Prompts are rendered with the tokenizer's chat template (HH format when it has none). Sampling is
    Gumbel-max over the top-k/top-p candidates at `temperature`, one random stream per row. Engines (`engine`,
    see `marsrm.lm.choose_engine`): llama.cpp for a GGUF policy on the CPU (continuous batching; with its per-row
    cache a row's sample depends on its prompt and seed alone, not on the rows called beside it), else
    transformers (`marsrm.lm.SeededSampler`; in fp32 a row's sample does not depend on the rows batched with it).
    `rows_per_call` rows go to each call, whose samples are cached together.
    """

    def __init__(self, model: str | None = "smollm2", *, temperature: float = 0.7, top_p: float = 0.95,
                 top_k: int = 50, max_new_tokens: int = 128, max_prompt_tokens: int = 512,
                 batch_size: int | None = None, dtype: str = "auto", device: str | None = None,
                 trust_remote_code: bool = False, engine: str = "auto", weights: str = "auto",
                 threads: str | int = "auto", kv_cache: str = "per-row", kernels: str = "auto"):
        from marsrm.lm import choose_engine, resolve_model
        from marsrm.runtime import default_device, resolve_dtype

        self.location, self.gguf_file = resolve_model(model)
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.max_new_tokens, self.max_prompt_tokens = max_new_tokens, max_prompt_tokens
        self.device = default_device(device)
        self.dtype_name = resolve_dtype(dtype, self.device, "sample")
        self.trust_remote_code = trust_remote_code
        self.engine_name = choose_engine(engine, self.gguf_file, self.device)
        self.engine = None
        if self.engine_name == "llama.cpp":
            from marsrm.llamacpp import LlamaEngine

            self.engine = LlamaEngine(Path(self.location) / self.gguf_file, weights=weights,
                                      slots=batch_size, threads=threads, cache=kv_cache, kernels=kernels)
            self.batch_size = self.engine.slots
            self.rows_per_call = 8 * self.batch_size  # the slots refill from these; a kill loses one call at most
        else:
            self.batch_size = self.rows_per_call = batch_size or 16
        self.model = self.tokenizer = None

    def settings(self) -> dict:
        """Everything that decides the samples; stored beside the cache, which refuses other settings."""
        from marsrm.lm import model_identity

        compute = (self.engine.identity() if self.engine is not None
                   else {"dtype": self.dtype_name})  # transformers: as before engines existed (caches stay valid)
        return {"model": model_identity(self.location, self.gguf_file), **compute,
                "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "max_new_tokens": self.max_new_tokens, "max_prompt_tokens": self.max_prompt_tokens}

    def load(self):
        if self.tokenizer is not None:
            return self.model
        from marsrm.lm import LMError, load_causal_lm, load_tokenizer, prepare

        if self.engine is not None:
            try:
                self.tokenizer = load_tokenizer(self.location, self.gguf_file)
            except OSError as err:
                raise LMError(f"setting 'policy': cannot read the tokenizer of '{self.location}' "
                              f"({str(err).splitlines()[0]})") from err
            self.engine.load()
            return None
        model, self.tokenizer = load_causal_lm(self.location, self.gguf_file, dtype=self.dtype_name,
                                               trust_remote_code=self.trust_remote_code)
        self.model, self.eos_ids = prepare(model, self.tokenizer, self.device)
        return self.model

    def prompt_ids(self, prompt) -> list[int]:
        """Token ids of the prompt, ready for the response: earliest turns dropped while too long, then the
        start cut, so the final user turn survives."""
        self.load()
        messages = [dict(m) for m in prompt]
        while True:
            ids = self._render(messages)
            if len(ids) <= self.max_prompt_tokens or len(messages) <= 1:
                return ids[-self.max_prompt_tokens:]
            messages = messages[1:]
            while len(messages) > 1 and messages[0]["role"] != "user":
                messages = messages[1:]

    def _render(self, messages) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(to_hh_text(messages).lstrip("\n") + "\n\nAssistant:")["input_ids"]

    def close(self) -> None:
        """Free the engine's model and cache (llama.cpp); the policy loads again when sampled from."""
        if self.engine is not None:
            self.engine.close()
            self.tokenizer = None

    def sample(self, rows: list[list[int]], seeds: list[int]) -> list[dict]:
        """One sampled response per row of prompt ids: {"text", "tokens", "finished"} (finished: ended by EOS)."""
        from marsrm.lm import generate

        model, tok = self.load(), self.tokenizer
        if self.engine is not None:
            outputs = self.engine.generate(rows, seeds=seeds, budgets=[self.max_new_tokens] * len(rows),
                                           temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        else:
            outputs = generate(model, tok, rows, eos_ids=self.eos_ids, max_new_tokens=self.max_new_tokens,
                               seeds=seeds, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        return [{"text": tok.decode([t for t in ids if t != tok.pad_token_id], skip_special_tokens=True).strip(),
                 "tokens": len(ids), "finished": finished} for ids, finished in outputs]


@dataclass
class Samples:
    """N sampled responses per prompt: texts[i][j] is sample j of prompt i ("" when the policy gave nothing)."""

    ids: list[str]
    prompts: list[tuple]
    texts: list[list[str]]

    @property
    def n(self) -> int:
        return min((len(t) for t in self.texts), default=0)

    def empty(self) -> np.ndarray:
        """(prompts, n) bool: samples with no text, skipped by every pick."""
        return np.array([[not t.strip() for t in row[:self.n]] for row in self.texts], dtype=bool).reshape(
            len(self.texts), self.n)


class SampleCache:
    """`policy.json` (the settings that decide the samples) and `samples.jsonl` (one line per row)."""

    def __init__(self, directory: str | os.PathLike, settings: dict):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        policy_file, self.path = self.directory / "policy.json", self.directory / "samples.jsonl"
        if policy_file.exists():
            changed = changed_settings(json.loads(policy_file.read_text()), settings)
            if changed:
                raise ConfigError(f"{self.directory}: these samples were drawn with other settings (there → now: "
                                  + ", ".join(changed) + "); choose another --samples directory or the same settings")
        else:
            atomic_write_json(policy_file, settings)
        self.rows: dict[tuple[str, int], dict] = {}
        if self.path.exists():
            for record in (json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line):
                self.rows[(record["key"], record["index"])] = record

    def add(self, records: list[dict]) -> None:
        for record in records:
            self.rows[(record["key"], record["index"])] = record
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.rows.values())
        atomic_write_text(self.path, lines)


def generate_samples(prompts: list[tuple[str, tuple]], n: int, policy: Policy, directory: str | os.PathLike, *,
                     seed: int = 0, echo=print, progress: bool = False) -> Samples:
    """n samples for each (id, prompt), drawing only the rows not yet in the cache at `directory`.

    Row (prompt, i) is seeded by (seed, prompt, i) alone, so asking for more samples later extends the
    same sequence, and samples 0..N-1 are the same for every N.
    """
    if not prompts:
        raise ConfigError("no prompts to sample for (the prompt set is empty)")
    if n < 1:
        raise ConfigError(f"setting 'ns': N must be at least 1 (got {n})")
    settings = {**policy.settings(), "seed": seed}
    cache = SampleCache(directory, settings)
    keys = [prompt_key(prompt) for _, prompt in prompts]
    todo = [(i, j) for i, key in enumerate(keys) for j in range(n) if (key, j) not in cache.rows]
    if todo:
        echo(f"sampling {len(todo)} responses ({len(prompts)} prompts × {n}, {len(cache.rows)} cached) "
             f"into {cache.path}")
        rendered = {i: policy.prompt_ids(prompts[i][1]) for i in sorted({i for i, _ in todo})}
        todo.sort(key=lambda row: (-len(rendered[row[0]]), row))  # similar lengths share a batch
        size = getattr(policy, "rows_per_call", policy.batch_size)
        batches = [todo[k:k + size] for k in range(0, len(todo), size)]
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="sampling", unit="batch")
        for batch in batches:
            seeds = [row_seed(seed, keys[i], j) for i, j in batch]
            outputs = policy.sample([rendered[i] for i, _ in batch], seeds)
            cache.add([{"key": keys[i], "index": j, "id": prompts[i][0], "seed": s, **o}
                       for (i, j), s, o in zip(batch, seeds, outputs, strict=True)])
    texts = [[cache.rows[(key, j)]["text"] for j in range(n)] for key in keys]
    return Samples(ids=[pid for pid, _ in prompts], prompts=[prompt for _, prompt in prompts], texts=texts)


# ---------------------------------------------------------------------------------------------
# Picks and the gold judge (pure numpy)
# ---------------------------------------------------------------------------------------------

def score_samples(model, samples: Samples, *, normalize: bool = False, batch_size: int = 64) -> np.ndarray:
    """(prompts, n) rewards of every non-empty sample; NaN where the sample is empty."""
    empty = samples.empty()
    rows, cols = np.nonzero(~empty)
    rewards = np.full(empty.shape, np.nan)
    if rows.size:
        rewards[rows, cols] = model.score([samples.prompts[i] for i in rows],
                                          [samples.texts[i][j] for i, j in zip(rows, cols)],
                                          normalize=normalize, batch_size=batch_size)
    return rewards


def pick(rewards: np.ndarray, n: int) -> np.ndarray:
    """Index of the highest reward among the first n samples of each prompt (first on ties; NaN = skipped);
    -1 for a prompt whose first n samples are all NaN."""
    first = rewards[:, :n]
    valid = ~np.isnan(first)
    index = np.argmax(np.where(valid, first, -np.inf), axis=1)
    index[~valid.any(axis=1)] = -1
    return index


def _interval(values: np.ndarray, n_resamples: int, seed: int) -> dict:
    """Mean of `values` (prompts first, then one axis per model's runs) with its 95% bootstrap interval; every
    read-out of one result sees the same prompt resamples (`metrics.resampled_means`), so they are paired."""
    if values.shape[0] == 0:
        return {"value": None, "low": None, "high": None, "n": 0}
    low, high = metrics.percentiles(metrics.resampled_means(values, n_resamples, seed), 0.95)
    return {"value": float(values.mean()), "low": low, "high": high, "n": int(values.shape[0])}


def _difference(a: np.ndarray, b: np.ndarray, n_resamples: int, seed: int) -> dict:
    """mean(a) − mean(b) for (prompts, runs) arrays on the same prompts: paired over prompts, runs redrawn."""
    differences = a[:, :, None] - b[:, None, :]
    replicates = metrics.resampled_means(differences, n_resamples, seed)
    low, high = metrics.percentiles(replicates, 0.95)
    return {"estimate": float(differences.mean()), "low": low, "high": high,
            "share_a_better": float(np.mean(replicates > 0)), "n": int(a.shape[0])}


def _runs(name: str, value) -> np.ndarray:
    """(runs, prompts, n) rewards from one (prompts, n) matrix or a list of them (one per run of a model)."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] == 0:
        raise ConfigError(f"rewards of '{name}': expected a (prompts, samples) matrix or a list of them, got shape "
                          f"{array.shape}")
    return array


def best_of_n_scores(rewards: dict, gold: np.ndarray, ns=DEFAULT_NS, *, n_resamples: int = 1000,
                     seed: int = 0) -> dict:
    """Best-of-N read-outs from score matrices.

    rewards: {model name: (prompts, n) rewards of every sample, or a list of such matrices, one per run of
    the model (its seeds)}; gold: (prompts, n) gold rewards. NaN marks a skipped sample (an empty response):
    a sample NaN in any matrix is skipped by every model. For each N (at most n), over the prompts that
    have at least one usable sample among their first N:
    - curve[name][N]: mean gold reward of the model's pick (averaged over its runs), bootstrap 95%
      interval, n prompts; proxy: the model's own mean reward of its pick; for several runs, `runs` and
      `per_run` (each run's mean gold reward);
    - baselines: "random" (the mean gold reward of the first N usable samples: a uniformly random pick) and
      "oracle" (the gold model's own best of N, an upper bound);
    - win_rate["A vs B"][N]: P(gold(pick A) > gold(pick B)) + ½ P(tie) over prompts and every pair of a
      run of A and a run of B, the share of ties, and the difference in mean gold reward;
    - picks[name][N]: the index of each prompt's pick (-1 where the prompt is skipped at that N); for a
      model of several runs, one such list per run.
    Intervals resample prompts (the same resamples for every read-out, so comparisons are paired) and,
    for models of several runs, the runs as well.
    """
    ns = check_ns(ns)
    gold = np.asarray(gold, dtype=np.float64)
    if gold.ndim != 2 or gold.shape[0] == 0:
        raise ConfigError(f"gold rewards: expected a (prompts, samples) matrix with at least one prompt, got shape "
                          f"{gold.shape}")
    if not rewards:
        raise ConfigError("best of N: give at least one reward model")
    runs = {name: _runs(name, r) for name, r in rewards.items()}
    for name, array in runs.items():
        if array.shape[1:] != gold.shape:
            raise ConfigError(f"rewards of '{name}': shape {array.shape[1:]} differs from the gold rewards' "
                              f"{gold.shape}")
    if ns[-1] > gold.shape[1]:
        raise ConfigError(f"setting 'ns': N = {ns[-1]} but only {gold.shape[1]} samples per prompt were scored")
    skip = np.isnan(gold) | np.any([np.isnan(a).any(axis=0) for a in runs.values()], axis=0)
    gold = np.where(skip, np.nan, gold)
    runs = {name: np.where(skip, np.nan, a) for name, a in runs.items()}
    names = list(runs)
    result = {"ns": ns, "prompts": int(gold.shape[0]), "samples_per_prompt": int(gold.shape[1]),
              "skipped_samples": int(skip.sum()), "skipped_prompts": {}, "curve": {name: {} for name in names},
              "picks": {name: {} for name in names},
              "baselines": {"random": {}, "oracle": {}}, "win_rate": {}}
    for n in ns:
        usable = ~np.isnan(gold[:, :n]).all(axis=1)
        result["skipped_prompts"][str(n)] = int((~usable).sum())
        rows = np.flatnonzero(usable)
        gold_n = gold[rows, :n]
        picked_gold = {}  # name -> (prompts, runs)
        for name in names:
            picks = np.stack([pick(r, n) for r in runs[name]])  # (runs, all prompts)
            result["picks"][name][str(n)] = picks[0].tolist() if len(picks) == 1 else picks.tolist()
            index = picks[:, rows]
            picked_gold[name] = np.stack([gold_n[np.arange(rows.size), i] for i in index], axis=1)
            proxy = np.stack([r[rows, i] for r, i in zip(runs[name], index, strict=True)], axis=1)
            entry = {**_interval(picked_gold[name], n_resamples, seed),
                     "proxy": float(proxy.mean()) if rows.size else None}
            if len(picks) > 1:
                entry.update(runs=len(picks), per_run=picked_gold[name].mean(axis=0).tolist() if rows.size else None)
            result["curve"][name][str(n)] = entry
        with np.errstate(invalid="ignore"):
            result["baselines"]["random"][str(n)] = _interval(np.nanmean(gold_n, axis=1) if rows.size
                                                              else np.zeros(0), n_resamples, seed)
            result["baselines"]["oracle"][str(n)] = _interval(np.nanmax(gold_n, axis=1) if rows.size
                                                              else np.zeros(0), n_resamples, seed)
        for a_index, a in enumerate(names):
            for b in names[a_index + 1:]:
                entry = result["win_rate"].setdefault(f"{a} vs {b}", {})
                ga, gb = picked_gold[a][:, :, None], picked_gold[b][:, None, :]
                outcome = np.where(ga > gb, 1.0, np.where(ga == gb, 0.5, 0.0))  # (prompts, runs of a, runs of b)
                entry[str(n)] = _interval(outcome, n_resamples, seed)
                if rows.size:
                    entry[str(n)]["ties"] = float(np.mean(ga == gb))
                    entry[str(n)]["gold_difference"] = _difference(picked_gold[a], picked_gold[b], n_resamples, seed)
    return result


def best_of_n(samples: Samples, reward_models: dict, gold, ns=DEFAULT_NS, *, normalize_gold: bool = True,
              n_resamples: int = 1000, seed: int = 0, batch_size: int = 64) -> dict:
    """Best-of-N of every reward model on `samples`, judged by `gold`: see `best_of_n_scores` for the result.

    reward_models: {name: RewardModel, a (prompts, n) reward matrix already computed, or a list of those
    (the runs of one model, e.g. its seeds)}; gold: a RewardModel or a matrix. normalize_gold: gold
    rewards in the gold model's normalised units when it stores them (result["gold_units"] says which).
    Empty samples are skipped and counted. Head-mode models that share an encoder (backbone, length,
    pooling, dtype, template) embed the samples once between them.
    """
    from marsrm.model import HeadRewardModel

    if not samples.ids:
        raise ConfigError("best of N: the prompt set is empty")
    empty = samples.empty()
    rows, cols = np.nonzero(~empty)
    embedded: dict[tuple, np.ndarray] = {}

    def rewards_of(model, normalize=False) -> np.ndarray:
        if isinstance(model, np.ndarray):
            return np.where(empty, np.nan, np.asarray(model, dtype=np.float64)[:, :samples.n])
        if not isinstance(model, HeadRewardModel) or not rows.size:
            return score_samples(model, samples, normalize=normalize, batch_size=batch_size)
        spec = model.spec
        key = (spec.backbone, spec.max_length, spec.pooling, spec.embed_dtype, spec.template)
        if key not in embedded:
            embedded[key] = model.embed([samples.prompts[i] for i in rows],
                                        [samples.texts[i][j] for i, j in zip(rows, cols)], batch_size=batch_size)
        values = model.score_embeddings(embedded[key])
        if normalize:
            values = model.normalize(values)
        matrix = np.full(empty.shape, np.nan)
        matrix[rows, cols] = values
        return matrix

    units = "given"
    if isinstance(gold, np.ndarray):
        gold_rewards = rewards_of(gold)
    else:
        normalized = normalize_gold and bool(getattr(gold.spec, "normalization", None))
        units = "normalized" if normalized else "raw"
        gold_rewards = rewards_of(gold, normalized)
    rewards = {name: [rewards_of(m) for m in model] if isinstance(model, (list, tuple)) else rewards_of(model)
               for name, model in reward_models.items()}
    result = best_of_n_scores(rewards, gold_rewards, ns, n_resamples=n_resamples, seed=seed)
    result.update({"gold_units": units, "empty_samples": int(empty.sum()), "prompt_ids": list(samples.ids)})
    return result


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def format_result(result: dict) -> str:
    """Plain-text tables: gold reward of each pick per N, then the win rates."""
    ns = result["ns"]
    lines = [(f"best of N on {result['prompts']} prompts, gold reward ({result.get('gold_units', 'raw')}) of each "
              f"model's pick, mean [95% interval]; {result['skipped_samples']} empty samples skipped")]
    runs = {name: curve[str(ns[0])].get("runs") for name, curve in result["curve"].items()}
    rows = {**{f"{name} ({runs[name]} runs)" if runs[name] else name: curve for name, curve in result["curve"].items()},
            **{f"({k})": v for k, v in result["baselines"].items()}}
    width = max(len(name) for name in rows) + 2
    lines.append(f"{'N':<{width}}" + "".join(f"{n:>26}" for n in ns))
    for name, curve in rows.items():
        cells = []
        for n in ns:
            cell = curve[str(n)]
            cells.append(f"{'-':>26}" if cell["value"] is None else
                         f"{cell['value']:>8.3f} [{cell['low']:.3f}, {cell['high']:.3f}]".rjust(26))
        lines.append(f"{name:<{width}}" + "".join(cells))
    skipped = {n: k for n, k in result["skipped_prompts"].items() if k}
    if skipped:
        lines.append("prompts left out (no text among their first N samples): "
                     + ", ".join(f"N={n}: {k}" for n, k in skipped.items()))
    for label, entries in result["win_rate"].items():
        lines.append(f"win rate {label} under gold (ties ½):")
        for n in ns:
            cell = entries[str(n)]
            if cell["value"] is not None:
                lines.append(f"  N={n:<3} {cell['value']:.3f} [{cell['low']:.3f}, {cell['high']:.3f}]  "
                             f"ties {cell['ties']:.2f}  (n={cell['n']})")
    return "\n".join(lines)


def plot_result(result: dict, path: str | os.PathLike) -> Path:
    """bon.png: gold reward of each pick against N (left), win rates against N (right); bands: 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = result["ns"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    curves = {**result["curve"], **{f"{k} (baseline)": v for k, v in result["baselines"].items()}}
    for name, curve in curves.items():
        xs = [n for n in ns if curve[str(n)]["value"] is not None]
        value, low, high = ([curve[str(n)][k] for n in xs] for k in ("value", "low", "high"))
        style = {"linestyle": "--", "marker": None} if name.endswith("(baseline)") else {"marker": "o"}
        (line,) = axes[0].plot(xs, value, label=name, **style)
        axes[0].fill_between(xs, low, high, alpha=0.15, color=line.get_color())
    axes[0].set_ylabel(f"gold reward of the pick ({result.get('gold_units', 'raw')})")
    axes[0].set_title("best of N: gold reward as N grows")
    for label, entries in result["win_rate"].items():
        xs = [n for n in ns if entries[str(n)]["value"] is not None]
        value, low, high = ([entries[str(n)][k] for n in xs] for k in ("value", "low", "high"))
        (line,) = axes[1].plot(xs, value, marker="o", label=label)
        axes[1].fill_between(xs, low, high, alpha=0.15, color=line.get_color())
    axes[1].axhline(0.5, color="grey", linewidth=0.8)
    axes[1].set_ylim(0, 1)
    axes[1].set_ylabel("win rate under gold (ties ½)")
    axes[1].set_title("pick of A against pick of B")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("N")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path
