"""The `translate` command: thin over the library."""
