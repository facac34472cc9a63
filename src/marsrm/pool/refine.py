"""Semantic refinement (the paper's revision): push apart pairs whose responses say nearly the same thing.

Distance of a pair = 1 − cosine(embedding(chosen), embedding(rejected)). Pairs below the set's mean
distance are selected. For each, an LLM rewrites the rejected response first (up to `tries` times, told not
to improve it), then the chosen one (up to `tries` times, told to stay as good); a rewrite is kept only if
it makes the distance grow, and the next step starts from the kept text. Tries run as batches across
all pairs still needing one, through the paraphrase cache, so a killed refinement resumes where it was.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from marsrm.pool.filter import cosine_rows
from marsrm.pool.paraphrase import Paraphraser, PoolError, Task, derive_seed
from marsrm.pool.store import ParaphraseStore, entry_key


@dataclass
class RefineReport:
    """Counts of a refinement run. rewritten: selected pairs the LLM gave at least one usable rewrite
    (non-empty, different from the text); kept: pairs where at least one rewrite made the distance grow."""

    pairs: int = 0
    mean_distance: float = 0.0
    selected: int = 0
    rewritten: int = 0
    kept: int = 0
    rejected_kept: int = 0
    chosen_kept: int = 0
    tries: int = 0
    requests: int = 0
    mean_distance_selected_before: float = 0.0
    mean_distance_selected_after: float = 0.0

    def summary(self) -> str:
        return (f"semantic refinement: {self.selected}/{self.pairs} pairs below the mean distance "
                f"{self.mean_distance:.4f} selected, {self.rewritten} rewritten, {self.kept} kept "
                f"(rejected {self.rejected_kept}, chosen {self.chosen_kept}); their mean distance "
                f"{self.mean_distance_selected_before:.4f} -> {self.mean_distance_selected_after:.4f}")


def semantic_distance(embed, chosen: list[str], rejected: list[str]) -> np.ndarray:
    """1 − cosine(embedding(chosen_i), embedding(rejected_i)) for each pair: float array (m,)."""
    if not chosen:
        return np.zeros(0)
    return 1.0 - cosine_rows(embed(list(chosen)), embed(list(rejected)))


def _cached_rewrites(rewriter: Paraphraser, store: ParaphraseStore | None, texts, others, role, seed) -> list[str]:
    tasks = [Task(t, derive_seed(seed, t, o, role), f"rewrite-{role}", o)
             for t, o in zip(texts, others, strict=True)]
    if store is None:
        return rewriter.complete(tasks)
    keys = [entry_key(task.kind, task.text, task.other, 1, task.seed) for task in tasks]
    todo = [i for i, key in enumerate(keys) if key not in store]
    finished = []

    def on_done(index, text):
        task = tasks[todo[index]]
        finished.append({"key": keys[todo[index]], "kind": task.kind, "n": 1, "seed": task.seed,
                         "source": task.text, "other": task.other, "outputs": [text]})

    try:
        rewriter.complete([tasks[i] for i in todo], on_done=on_done)
    except BaseException:
        if rewriter.batch_invariant:  # otherwise a resumed run must form the same batch again (see build.py)
            store.put(finished)
        raise
    store.put(finished)
    return [store.get(key)["outputs"][0] for key in keys]


def refine_pairs(pairs, rewriter: Paraphraser, embed, *, tries: int = 5, seed: int = 0,
                 store: ParaphraseStore | None = None, progress: bool = True):
    """(refined pairs, RefineReport). A refined pair keeps its id; meta["refined"] records what changed and the
    original texts: {"rejected": original or None, "chosen": original or None, "distance": [before, after]}."""
    if tries < 1:
        raise PoolError(f"setting 'refine_tries': must be at least 1 (got {tries})")
    if not rewriter.can_rewrite:
        raise PoolError(f"paraphraser '{rewriter.kind}' cannot rewrite; set refine_backend to local or openai")
    pairs = list(pairs)
    report = RefineReport(pairs=len(pairs), tries=tries)
    if not pairs:
        return pairs, report
    rewriter.check()
    chosen = [p.chosen for p in pairs]
    rejected = [p.rejected for p in pairs]
    before = semantic_distance(embed, chosen, rejected)
    distance = before.copy()
    report.mean_distance = float(before.mean())
    selected = [i for i in range(len(pairs)) if before[i] < report.mean_distance]
    report.selected = len(selected)
    usable, kept = set(), {"rejected": set(), "chosen": set()}
    bar = tqdm(total=2 * tries, desc="refining", unit="try", disable=not progress or not selected, dynamic_ncols=True)
    for role in ("rejected", "chosen"):
        todo = list(selected)
        for attempt in range(tries):
            if todo:
                texts = [rejected[i] if role == "rejected" else chosen[i] for i in todo]
                others = [chosen[i] if role == "rejected" else rejected[i] for i in todo]
                outs = _cached_rewrites(rewriter, store, texts, others, role, derive_seed(seed, "refine", attempt))
                report.requests += len(todo)
                new_chosen = [o if role == "chosen" else chosen[i] for i, o in zip(todo, outs, strict=True)]
                new_rejected = [o if role == "rejected" else rejected[i] for i, o in zip(todo, outs, strict=True)]
                grown = semantic_distance(embed, new_chosen, new_rejected)
                still = []
                for i, text, out, d in zip(todo, texts, outs, grown, strict=True):
                    ok = bool(out.strip()) and out.strip() != text.strip()
                    if ok:
                        usable.add(i)
                    if ok and d > distance[i]:
                        distance[i] = d
                        (rejected if role == "rejected" else chosen)[i] = out
                        kept[role].add(i)
                    else:
                        still.append(i)
                todo = still
            bar.update(1)
    bar.close()
    report.rewritten = len(usable)
    report.rejected_kept, report.chosen_kept = len(kept["rejected"]), len(kept["chosen"])
    report.kept = len(kept["rejected"] | kept["chosen"])
    if selected:
        report.mean_distance_selected_before = float(before[selected].mean())
        report.mean_distance_selected_after = float(distance[selected].mean())
    out = []
    for i, pair in enumerate(pairs):
        if i in kept["rejected"] or i in kept["chosen"]:
            meta = {**pair.meta, "refined": {"rejected": pair.rejected if i in kept["rejected"] else None,
                                             "chosen": pair.chosen if i in kept["chosen"] else None,
                                             "distance": [round(float(before[i]), 6), round(float(distance[i]), 6)]}}
            pair = dataclasses.replace(pair, chosen=chosen[i], rejected=rejected[i], meta=meta)
        out.append(pair)
    return out, report
