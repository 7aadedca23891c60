"""The `rlhf-dist` command: main.py builds the parser from one module per command group."""
