"""Shared-prompt packing: the layout, the mask, and its equivalence to plain two-row batches on a tiny Llama.

Equivalence is checked in fp32 on a randomly initialised 2-layer Llama (tests/test_decoder.py's `tiny_llama`):
the packed rewards equal the plain rows' rewards, and the Bradley–Terry gradients (with margins, weights and
centering) equal the plain gradients, to round-off.
"""
import dataclasses
import logging

import numpy as np
import pytest
import torch

from marsrm.learners import FullLearner, token_examples
from marsrm.packing import PairTokens, pack, pack_rows, row_width, split_pair, supports_packing, truncate_pair
from marsrm.train import OptimSettings, PackedExamples, TokenExamples, bradley_terry_loss
from test_decoder import full_model, random_pairs, tiny_llama


def test_split_pair_is_the_longest_common_prefix():
    pair = split_pair([1, 5, 6, 7, 8], [1, 5, 6, 9])
    assert (pair.prompt, pair.chosen, pair.rejected) == ([1, 5, 6], [7, 8], [9])
    assert pair.chosen_ids() == [1, 5, 6, 7, 8] and pair.rejected_ids() == [1, 5, 6, 9] and len(pair) == 6


def test_truncation_cuts_the_prompt_once_so_the_longer_response_fits():
    pair = PairTokens(prompt=[1, 10, 11, 12, 13, 14], chosen=[20, 21, 22], rejected=[30])
    cut = truncate_pair(pair, max_length=6, keep_front=1)
    assert cut.prompt == [1, 13, 14]  # BOS kept, the oldest prompt tokens dropped: 3 + 3 = 6
    assert (cut.chosen, cut.rejected) == ([20, 21, 22], [30])
    assert truncate_pair(pair, max_length=9, keep_front=1) == pair  # fits already
    long = truncate_pair(PairTokens([1, 10, 11], list(range(20, 30)), [30]), max_length=5, keep_front=1)
    assert long.prompt == [1] and long.chosen == [26, 27, 28, 29] and long.rejected == [30]


def test_rows_are_first_fit_longest_first_within_the_budget():
    rows = pack_rows([5, 3, 4, 2, 9], budget=8)
    assert rows == [[4], [0, 1], [2, 3]]
    assert sorted(i for row in rows for i in row) == [0, 1, 2, 3, 4]


def slots(lengths, width):
    rows = pack_rows(lengths, width)
    return len(rows) * max(sum(lengths[i] for i in row) for row in rows)


def test_row_width_packs_a_batch_into_fewer_token_slots_than_the_full_budget():
    # At the full budget first fit puts the 100 beside the 400 (rows of 500 and 300, both computed 500 wide:
    # 1,000 slots); at width 400 it joins the 300 (two rows of 400: 800 slots).
    assert slots([400, 300, 100], 512) == 1000
    assert row_width([400, 300, 100], budget=512) == 400 and slots([400, 300, 100], 400) == 800
    assert row_width([600, 100], budget=512) == 600  # a segment longer than the budget sets the floor
    rng = np.random.default_rng(0)
    for _ in range(200):
        lengths = [int(n) for n in rng.integers(20, 700, size=int(rng.integers(1, 17)))]
        width = row_width(lengths, budget=512)
        assert max(lengths) <= width <= max(512, max(lengths))
        assert slots(lengths, width) <= slots(lengths, max(512, max(lengths)))


def test_pack_mask_positions_and_reward_positions():
    pairs = [PairTokens([1, 2, 3], [4, 5], [6, 7, 8]), PairTokens([1, 9], [10], [11, 12])]
    batch = pack(pairs, budget=20, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 1, 9, 10, 11, 12]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3, 4, 5, 0, 1, 2, 2, 3]]
    mask = batch["attention_mask"][0, 0]
    expected = np.zeros((13, 13), dtype=bool)
    for i, sees in {0: [0], 1: [0, 1], 2: [0, 1, 2], 3: [0, 1, 2, 3], 4: [0, 1, 2, 3, 4], 5: [0, 1, 2, 5],
                    6: [0, 1, 2, 5, 6], 7: [0, 1, 2, 5, 6, 7], 8: [8], 9: [8, 9], 10: [8, 9, 10], 11: [8, 9, 11],
                    12: [8, 9, 11, 12]}.items():
        expected[i, sees] = True
    assert (mask.numpy() == expected).all()
    assert batch["chosen_at"].tolist() == [[0, 4], [0, 10]] and batch["rejected_at"].tolist() == [[0, 7], [0, 12]]

    two_rows = pack(pairs, budget=8, pad_id=0)  # 8 + 5 tokens > 8: one row each, the second padded
    assert two_rows["input_ids"].shape == (2, 8) and two_rows["input_ids"][1, 5:].tolist() == [0, 0, 0]
    pad_mask = two_rows["attention_mask"][1, 0, 5:]
    assert (pad_mask.sum(-1) == 1).all()  # padding sees itself only: no fully masked row, no NaN
    assert two_rows["chosen_at"].tolist() == [[0, 4], [1, 2]]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def both_paths(model, pairs, **columns):
    """The plain two-row examples and the packed ones of the same pairs."""
    packed = token_examples(model, pairs, packed=True, **columns)
    plain = token_examples(model, pairs, packed=False, **columns)
    assert isinstance(packed, PackedExamples) and isinstance(plain, TokenExamples) and plain.last_token
    return plain, packed


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_rewards_equal_plain_two_row_rewards(backbone, attention):
    model = full_model(backbone)
    model.model.set_attn_implementation(attention)
    model.model.eval()
    pairs = random_pairs(12, seed=4)
    plain, packed = both_paths(model, pairs)
    assert plain.chosen_ids == [p.chosen_ids() for p in packed.pairs]
    index = np.arange(len(pairs))
    batch = packed.collate(index)
    assert batch["input_ids"].shape[0] < len(pairs)  # several segments share a row
    with torch.no_grad():
        packed_rewards = packed.forward(model.model, batch)
        plain_batch = plain.collate(index)
        plain_rewards = plain.forward(model.model, plain_batch)
        pooled = model.model(**plain_batch).logits[:, 0]  # transformers' own reading, with the distinct pad
    assert plain_rewards.std() > 1e-3
    torch.testing.assert_close(packed_rewards, plain_rewards, rtol=0, atol=1e-5)
    torch.testing.assert_close(pooled, plain_rewards, rtol=0, atol=1e-6)
    chosen, _ = model.score_pairs(pairs)  # scoring one response at a time: the same rewards (nothing was cut)
    np.testing.assert_allclose(chosen, plain_rewards[: len(pairs)].numpy(), atol=1e-5)


def test_bradley_terry_gradients_of_packed_and_plain_are_equal(backbone):
    model = full_model(backbone)
    model.model.train()
    pairs = [dataclasses.replace(p, margin=0.1 * i) for i, p in enumerate(random_pairs(10, seed=5))]
    rng = np.random.default_rng(0)
    plain, packed = both_paths(model, pairs, weight=rng.uniform(0.5, 2.0, len(pairs)))
    assert packed.margin is not None and packed.weight is not None
    index = rng.permutation(len(pairs))
    gradients, losses = [], []
    for examples in (plain, packed):
        model.model.zero_grad(set_to_none=True)
        batch = examples.collate(index)
        rewards = examples.forward(model.model, batch)
        loss = bradley_terry_loss(rewards[: len(index)], rewards[len(index):], margin=batch["margin"],
                                  weight=batch["weight"], center_coefficient=0.05).mean()
        loss.backward()
        losses.append(loss.item())
        gradients.append(torch.cat([p.grad.flatten() for p in model.model.parameters()]))
    assert abs(losses[0] - losses[1]) < 1e-6
    scale = gradients[0].abs().max()
    assert scale > 1e-4
    assert (gradients[0] - gradients[1]).abs().max() <= 1e-5 * scale
    embeddings = model.model.model.embed_tokens.weight.grad
    prompt_token = packed.pairs[0].prompt[-1]
    assert embeddings[prompt_token].abs().sum() > 0  # gradients reach the shared prompt


def test_the_shared_truncation_rule_applies_to_both_paths(backbone):
    model = full_model(backbone)
    model.spec.max_length = 16
    pairs = random_pairs(8, seed=6, prompt_words=(20, 30), response_words=(2, 8))
    plain, packed = both_paths(model, pairs)
    for chosen, rejected, pair in zip(plain.chosen_ids, plain.rejected_ids, packed.pairs):
        assert max(len(chosen), len(rejected)) == 16 and chosen[0] == model.tokenizer.bos_token_id
        assert pair.prompt == chosen[: len(pair.prompt)] == rejected[: len(pair.prompt)]


def test_packing_is_on_by_default_for_causal_backbones_and_falls_back_once(backbone, caplog):
    model = full_model(backbone)
    learner = FullLearner(model)
    assert supports_packing(model.model) == (True, "sdpa") and learner.packs()
    assert not FullLearner(model, packing=False).packs()
    model.model.config._attn_implementation = "flash_attention_2"  # only asked, never run: no such kernel here
    fallback = FullLearner(model)
    with caplog.at_level(logging.INFO, logger="marsrm.learners"):
        assert not fallback.packs() and not fallback.packs()
    said = [r.getMessage() for r in caplog.records if "flash_attention_2" in r.getMessage()]
    assert len(said) == 1 and "plain two-row" in said[0]


def test_encoders_keep_the_plain_path(minilm_path):
    from marsrm.model import ModelSpec, new_full_model

    model = new_full_model(ModelSpec(mode="full", backbone=minilm_path, max_length=32))
    assert not FullLearner(model).packs()
    examples = token_examples(model, random_pairs(3, seed=7))
    assert isinstance(examples, TokenExamples) and not examples.last_token
    with pytest.raises(ValueError, match="causal"):
        token_examples(model, random_pairs(3, seed=7), packed=True)


def test_packed_and_plain_training_end_at_the_same_margins(backbone):
    from marsrm.train import train_epochs

    pairs = random_pairs(16, seed=8)
    summaries = {}
    for packing in (True, False):
        model = full_model(backbone, seed=1)
        learner = FullLearner(model, packing=packing)
        optim = OptimSettings(epochs=1, batch_size=8, lr=1e-3, seed=0)
        examples = token_examples(model, pairs, packed=packing)
        summaries[packing] = train_epochs(model.model, examples, optim, progress=False)
        summaries[packing]["margins"] = learner.margins(pairs)
    assert summaries[True]["steps"] == summaries[False]["steps"] == 2
    # Two Adam steps from the same start on the same batches: round-off differences stay small.
    np.testing.assert_allclose(summaries[True]["margins"], summaries[False]["margins"], atol=1e-3)


def test_the_margin_pass_packs_too_and_gives_the_plain_margins(backbone):
    model = full_model(backbone)
    pairs = random_pairs(20, seed=9)
    packed = FullLearner(model).margins(pairs)
    plain = FullLearner(model, packing=False).margins(pairs)
    assert np.std(plain) > 1e-3
    np.testing.assert_allclose(packed, plain, atol=1e-5)
