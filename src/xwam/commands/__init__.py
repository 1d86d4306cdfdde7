"""Command-line verbs, one module each (see xwam.cli)."""
