"""`python -m kubetune_trainer FILE [--output URI] [--name N] [--termination-log PATH]` (pods, torchrun)."""

import sys

from kubetune_trainer.entrypoint import main

if __name__ == "__main__":
    sys.exit(main())
