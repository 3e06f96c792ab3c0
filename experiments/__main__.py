"""``python -m experiments`` from a checkout: the same command line as ``python -m pyrod.experiments``."""
import sys

from pyrod.experiments.__main__ import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m experiments"))
