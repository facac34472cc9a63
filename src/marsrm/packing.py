"""Shared-prompt packing for causal reward models: one pass over a pair's prompt for both responses, no padding.

A pair's two inputs, tokenized as the plain path tokenizes them, share their first tokens (the prompt). A packed
segment holds those tokens once, then the rest of the chosen input, then the rest of the rejected one:

    tokens     p0 p1 p2 | c0 c1 | r0 r1 r2
    positions   0  1  2 |  3  4 |  3  4  5      (the rejected response restarts at the prompt's end)

Under the segment's attention mask every token sees the tokens before it, except that rejected tokens do not
see chosen ones; so each response computes exactly what it computes in its own row, and the prompt's
gradients collect both. Several segments share a row up to a token budget, each seeing only itself
(block-diagonal), and the reward of each response is read at its last token.

The mask is passed to the model as a 4D tensor (rows, 1, length, length), which eager and SDPA attention use
unchanged; transformers' detection of packed sequences from position ids is never relied on (it would cut
the rejected response off from its prompt).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Attention implementations that apply a 4D mask as given (others, such as flash-attention, ignore or refuse it).
MASKED_ATTENTION = ("eager", "sdpa")


@dataclass
class PairTokens:
    """One pair's token ids: the shared `prompt`, then what follows it in the chosen and the rejected input."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]

    def __len__(self) -> int:
        """Tokens in the packed segment."""
        return len(self.prompt) + len(self.chosen) + len(self.rejected)

    def chosen_ids(self) -> list[int]:
        return self.prompt + self.chosen

    def rejected_ids(self) -> list[int]:
        return self.prompt + self.rejected


def split_pair(chosen_ids: list[int], rejected_ids: list[int]) -> PairTokens:
    """Split two tokenized inputs at their longest common prefix (exact: no boundary is re-tokenized)."""
    shared = 0
    for a, b in zip(chosen_ids, rejected_ids):
        if a != b:
            break
        shared += 1
    return PairTokens(list(chosen_ids[:shared]), list(chosen_ids[shared:]), list(rejected_ids[shared:]))


def truncate_pair(pair: PairTokens, max_length: int, keep_front: int = 0) -> PairTokens:
    """Cut a pair once from the left of its prompt so that prompt + the longer response fits `max_length`.

    The first `keep_front` tokens (the ones the tokenizer adds in front, such as BOS) are kept, as left
    truncation keeps them. Both inputs then keep the same prompt tokens. A response that alone does not fit
    loses its own first tokens, as left truncation would cut it.
    """
    longer = max(len(pair.chosen), len(pair.rejected))
    excess = len(pair.prompt) + longer - max_length
    if excess <= 0:
        return pair
    front = pair.prompt[:min(keep_front, len(pair.prompt))]
    body = pair.prompt[len(front):]
    prompt = front + body[min(excess, len(body)):]
    room = max_length - len(prompt)
    cut = lambda ids: ids[len(ids) - room:] if len(ids) > room else ids  # noqa: E731
    return PairTokens(prompt, cut(pair.chosen), cut(pair.rejected))


def front_special_tokens(tokenizer) -> int:
    """How many tokens the tokenizer adds in front of every text (1 for a BOS token, else usually 0)."""
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    return next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), 0)


def pair_tokens(tokenizer, chosen_texts, rejected_texts, max_length: int) -> list[PairTokens]:
    """Each pair's shared-prompt tokens under the one truncation rule (`truncate_pair`)."""
    keep_front = front_special_tokens(tokenizer)
    encode = lambda texts: tokenizer(list(texts), verbose=False)["input_ids"]  # noqa: E731
    return [truncate_pair(split_pair(c, r), max_length, keep_front)
            for c, r in zip(encode(chosen_texts), encode(rejected_texts), strict=True)]


# ---------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------

def pack_rows(lengths, budget: int) -> list[list[int]]:
    """Segments into rows: first fit, longest first; a row holds segments up to `budget` tokens in all.

    lengths: tokens per segment. Returns, per row, the segment indices in order. A segment longer than the
    budget gets a row of its own.
    """
    rows, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fit = next((r for r in range(len(rows)) if room[r] >= lengths[i]), None)
        if fit is None:
            rows.append([i])
            room.append(budget - lengths[i])
        else:
            rows[fit].append(i)
            room[fit] -= lengths[i]
    return rows


def row_width(lengths, budget: int) -> int:
    """The row width at most `budget` (or the longest segment, when longer) that packs into the fewest token slots.

    First fit at the full budget can leave rows half empty when segments are long (two of 300 tokens do not
    share a row of 512): every row of a batch is as wide as its widest, so the cost is rows × width. This tries
    widths from the longest segment up to the budget and keeps the one with the smallest rows × width (ties:
    the narrower, which also costs fewer attention slots).
    """
    longest = max(lengths)
    top = max(budget, longest)
    best = None
    for width in np.unique(np.linspace(longest, top, 17).astype(int)):
        rows = pack_rows(lengths, int(width))
        used = max(sum(lengths[i] for i in row) for row in rows)
        if best is None or len(rows) * used < best[0]:
            best = (len(rows) * used, int(width))
    return best[1]


def pack(pairs: list[PairTokens], budget: int, pad_id: int) -> dict:
    """Pack pairs into rows of at most `budget` tokens (or one segment, when longer); tensors for the model.

    Returns input_ids, position_ids (rows, L) int64; attention_mask (rows, 1, L, L) bool, True where a query
    (dim 2) may attend to a key (dim 3); chosen_at and rejected_at (n, 2) int64, the (row, column) of each
    pair's reward. L is the longest row; shorter rows end in `pad_id` tokens that attend only to themselves.
    """
    rows = pack_rows([len(p) for p in pairs], budget)
    width = max(sum(len(pairs[i]) for i in row) for row in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    positions = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width, width), dtype=bool)
    mask[:, np.arange(width), np.arange(width)] = True
    chosen_at = np.zeros((len(pairs), 2), dtype=np.int64)
    rejected_at = np.zeros((len(pairs), 2), dtype=np.int64)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            pair = pairs[i]
            n_prompt, n_chosen, n_rejected = len(pair.prompt), len(pair.chosen), len(pair.rejected)
            end = start + len(pair)
            input_ids[r, start:end] = pair.prompt + pair.chosen + pair.rejected
            positions[r, start:end] = np.r_[np.arange(n_prompt + n_chosen),
                                            n_prompt + np.arange(n_rejected)]
            mask[r, start:end, start:end] = np.tri(len(pair), dtype=bool)
            mask[r, start + n_prompt + n_chosen:end, start + n_prompt:start + n_prompt + n_chosen] = False
            # An empty response is the shared prompt itself: its reward is read at the prompt's last token.
            chosen_at[i] = r, start + n_prompt + n_chosen - 1
            rejected_at[i] = r, (end - 1) if n_rejected else (start + n_prompt - 1)
            start = end
    return {"input_ids": torch.from_numpy(input_ids), "position_ids": torch.from_numpy(positions),
            "attention_mask": torch.from_numpy(mask[:, None]), "chosen_at": torch.from_numpy(chosen_at),
            "rejected_at": torch.from_numpy(rejected_at)}


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask (True = attend) as the additive float mask eager attention adds to its scores (0 or −max)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def supports_packing(model) -> tuple[bool, str]:
    """Whether `model`'s attention takes the packed 4D mask, and the attention implementation's name."""
    config = getattr(model, "config", None)
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    return implementation in MASKED_ATTENTION, implementation


# ---------------------------------------------------------------------------------------------
# Reading rewards
# ---------------------------------------------------------------------------------------------

def score_layer(module: torch.nn.Module) -> torch.nn.Module:
    """The sequence-classification `score` layer inside `module` (through DDP, peft or other wrappers)."""
    found = [(name, m) for name, m in module.named_modules() if name.split(".")[-1] == "score"]
    if not found:
        raise ValueError(f"{type(module).__name__} has no `score` layer: not a decoder sequence-classification model")
    return min(found, key=lambda item: item[0].count("."))[1]  # the outermost: a peft wrapper, not its copies


def token_rewards(module: torch.nn.Module, **inputs) -> torch.Tensor:
    """The reward at every position, shape (rows, L): the `score` layer's output, caught on its way to pooling.

    The whole module is called (so DDP, peft and autocast see an ordinary forward); what it pools is ignored.
    """
    caught = []
    handle = score_layer(module).register_forward_hook(lambda _layer, _args, out: caught.append(out))
    try:
        module(**inputs)
    finally:
        handle.remove()
    return caught[-1][..., 0]


def packed_rewards(module: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Rewards of a `pack`ed batch, shape (2n,): the n chosen, then the n rejected."""
    dtype = next(module.parameters()).dtype
    rewards = token_rewards(module, input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                            attention_mask=additive_mask(batch["attention_mask"], dtype))
    at = torch.cat([batch["chosen_at"], batch["rejected_at"]])
    return rewards[at[:, 0], at[:, 1]]


def last_token_rewards(module: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Rewards of right-padded rows read at each row's last real token (attention_mask's count − 1), shape (rows,).

    Unlike transformers' own pooling, this does not depend on the pad token differing from the last token."""
    rewards = token_rewards(module, input_ids=input_ids, attention_mask=attention_mask)
    last = attention_mask.sum(dim=1) - 1
    return rewards[torch.arange(len(rewards), device=rewards.device), last]
