"""Train a reward model with MARS rounds inside TRL's RewardTrainer, on a pool built by `marsrm augment`.

    python examples/trl_mars.py --pool runs/trl-pool --output_dir runs/trl --num_train_epochs 2 --budget 64
    accelerate launch --config_file ds_zero3.yaml examples/trl_mars.py --pool ... --bf16 true   # many GPUs

Every `RewardConfig` / `TrainingArguments` flag works (learning rate, batch sizes, --report_to, --save_strategy, ...),
plus the MARS settings of `marsrm.trl.MarsRewardConfig` (--pool, --strategy, --budget, --tau, --tau_scale,
--pair_format); the rounds are the epochs (--num_train_epochs). docs/TRL.md walks through it. At the end the script
prints each round's margin pass and training time, and writes them to <output_dir>/mars_rounds.json.
"""
import json
import os
from dataclasses import dataclass, field

from transformers import AutoTokenizer, HfArgumentParser

from marsrm.runtime import resolve_backbone
from marsrm.trl import MarsRewardConfig, MarsRewardTrainer, round_statistics


@dataclass
class ScriptArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "backbone (default: marsrm's packaged "
                                                                          "all-MiniLM-L6-v2)"})


def main():
    script, args = HfArgumentParser((ScriptArguments, MarsRewardConfig)).parse_args_into_dataclasses()
    model = resolve_backbone(script.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.eos_token is None and args.eos_token is None:
        args.eos_token = tokenizer.sep_token  # BERT-style tokenizers: TRL ends each text with an EOS token
    trainer = MarsRewardTrainer(model, args=args, processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)  # a checkpoint folder of this run, or None
    trainer.save_model(args.output_dir)
    if trainer.is_world_process_zero():
        rounds = [{**round_statistics(r), "train_seconds": r.train_seconds, "resumed": r.resumed}
                  for r in trainer.rounds_]
        with open(os.path.join(args.output_dir, "mars_rounds.json"), "w") as handle:
            json.dump(rounds, handle, indent=1)
        for r in rounds:
            print(f"round {r['round']}: margin pass {r['margin_seconds']:.1f} s, epoch {r['train_seconds']:.1f} s "
                  f"(margin pass = {r['margin_seconds'] / r['train_seconds']:.1%} of the epoch), "
                  f"mis-ranked {r['mis_ranked']:.3f}, ESS {r['effective_sample_size']:.0f}")


if __name__ == "__main__":
    main()
