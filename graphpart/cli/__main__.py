"""`python -m graphpart.cli`: the `graphpart` program."""

from graphpart.cli.program import entry

if __name__ == "__main__":
    entry()
