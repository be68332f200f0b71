"""Queue backends, one module each; optional ones import their library lazily."""
