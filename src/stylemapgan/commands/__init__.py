"""Subcommands of the ``stylemapgan`` CLI, one module each (see ``stylemapgan.cli``)."""
