"""``python -m jaxue``: the same as the ``jaxue`` command."""

from jaxue import cli

if __name__ == "__main__":
  cli.entry_point()
