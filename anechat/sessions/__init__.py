"""Conversation history: a SQLite store (store.py) with forward migrations, FTS5 search, export and the
`anechat sessions` subcommand. Kept import-light: the CLI imports commands.py just to build its parser."""
