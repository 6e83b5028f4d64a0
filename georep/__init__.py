"""The `georep` command: composes the parts (producers, consumers, engine) into processes."""
