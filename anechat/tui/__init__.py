"""The full-screen Textual front end. Imported only when a terminal can host it."""
