"""`python -m marsrm …`: the same command line as `marsrm …`."""
import sys

from marsrm.cli import main

if __name__ == "__main__":
    sys.exit(main())
