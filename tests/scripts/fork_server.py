"""Runs `marsrm` commands as forked children of one process that has already imported everything, so that a
test can start (and SIGKILL) many of them without paying for the imports each time.

Protocol, one JSON object per line on stdin: {"argv": [...], "log": "path"}. For each, it forks a child that
runs `marsrm.cli.main(argv)` (what the `marsrm` console script runs) with stdout and stderr appended to `log`,
prints `pid <pid>`, waits for the child and prints `exit <code>` (a negative code: killed by that signal).
Only imports happen before the fork: no thread pool exists yet that a child would inherit half-made.
"""
import json
import os
import sys
import traceback

import accelerate  # noqa: F401
import safetensors.torch  # noqa: F401
import torch.utils.tensorboard  # noqa: F401
import transformers.models.bert.modeling_bert  # noqa: F401

from marsrm import cli

cli._commands()  # the commands' modules, imported lazily by `main`
import marsrm.pool  # noqa: E402,F401

print("ready", flush=True)
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        code = 1
        try:
            code = cli.main(request["argv"])
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(f"pid {pid}", flush=True)
    _, status = os.waitpid(pid, 0)
    print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)
