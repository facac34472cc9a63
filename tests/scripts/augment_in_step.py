"""`marsrm augment ARGS…` that starts only once GO_FILE exists, with the lexical backend slowed to DELAY seconds
per text, so that several processes started by a test paraphrase the same texts at the same time.

    python augment_in_step.py GO_FILE DELAY augment --paraphraser lexical …

Prints `ready` once imported; the outputs are the lexical backend's own (the delay only spaces them out).
"""
import sys
import time
from pathlib import Path

from marsrm import cli
from marsrm.pool.lexical import LexicalParaphraser

go, delay, argv = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
paraphrase = LexicalParaphraser.paraphrase


def slowed(self, texts, n, seed, on_done=None):
    def done(row, outputs):
        time.sleep(delay)
        on_done(row, outputs)

    return paraphrase(self, texts, n, seed, on_done=done if on_done is not None else None)


LexicalParaphraser.paraphrase = slowed
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
sys.exit(cli.main(argv))
