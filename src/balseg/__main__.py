"""`python -m balseg` (used by torchrun and by the annotation app to continue a run)."""

from balseg.cli import main

if __name__ == "__main__":
    main()
