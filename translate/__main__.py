"""`python -m translate` (what `torchrun -m translate` runs)."""

from translate.cli.commands import main

if __name__ == "__main__":
    main()
