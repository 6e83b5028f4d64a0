"""The console: the georep API's pages at `/ui` (georep.console.app)."""
