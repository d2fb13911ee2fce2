"""`anechat serve`: an OpenAI-compatible HTTP server over the generation engine (a front end beside the TUI,
the REPL and pipe mode; it imports neither Textual nor prompt_toolkit)."""
