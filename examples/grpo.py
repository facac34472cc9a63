"""GRPO with TRL, rewarded by a saved marsrm reward model: the RL hand-off in one script.

On one or more GPUs (one process per GPU; each loads its own copy of the reward model):

    accelerate launch --num_processes 4 examples/grpo.py --reward-model runs/mars/model \
        --policy HuggingFaceTB/SmolLM2-360M-Instruct --output runs/grpo-mars --bf16

On a CPU, for a smoke test: python examples/grpo.py --reward-model runs/rm/model --prompts 8 --max-steps 2 \
    --max-completion-length 16 --per-device-batch 2 --num-generations 2
"""
from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reward-model", required=True, help="saved marsrm reward model directory")
    parser.add_argument("--no-normalize", dest="normalize", action="store_false",
                        help="raw rewards instead of the model's normalised units")
    parser.add_argument("--policy", default="smollm2", help="policy LM: directory, hub name or .gguf file")
    parser.add_argument("--data", default="hh-rlhf/helpful-base", help="prompts: the training part of this source")
    parser.add_argument("--train-size", type=int, default=1000, help="pairs whose prompts are used (seeded split)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=None, help="use only the first N prompts")
    parser.add_argument("--output", default="runs/grpo")
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--learning-rate", type=float, default=1e-6)
    parser.add_argument("--per-device-batch", type=int, default=8, help="completions per device per step")
    parser.add_argument("--num-generations", type=int, default=8, help="completions per prompt (GRPO group)")
    parser.add_argument("--max-completion-length", type=int, default=128)
    parser.add_argument("--beta", type=float, default=0.04, help="KL coefficient against the initial policy")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPUs)")
    args = parser.parse_args(argv)

    from pathlib import Path

    from accelerate import PartialState
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from marsrm.data import load_pairs, split_pairs
    from marsrm.rl import prepare_policy, reward_function

    pairs = split_pairs(load_pairs(args.data).pairs, train_size=args.train_size, eval_size=0, seed=args.seed).train
    prompts = list({str(p.prompt): [dict(m) for m in p.prompt] for p in pairs}.values())[:args.prompts]
    with PartialState().main_process_first():  # one process de-quantises a .gguf policy; the others reuse it
        policy = prepare_policy(args.policy, Path(args.output) / "policy-init")
    config = GRPOConfig(output_dir=args.output, max_steps=args.max_steps, learning_rate=args.learning_rate,
                        per_device_train_batch_size=args.per_device_batch, num_generations=args.num_generations,
                        max_completion_length=args.max_completion_length, beta=args.beta, bf16=args.bf16,
                        logging_steps=10, save_steps=100, seed=args.seed, report_to="tensorboard")
    trainer = GRPOTrainer(model=policy, reward_funcs=reward_function(args.reward_model, normalize=args.normalize),
                          args=config, train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]))
    trainer.train()
    trainer.save_model(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
