"""The pytest plugin (entry point ``pytest11``): options, session state, hooks, fixtures."""
