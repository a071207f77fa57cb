"""The code tasks share (Hugging Face and local file loading, byte and subword tokenizers, LRA's
settings, the Pathfinder drawing). Not components: the registry imports only the modules directly
in ``tasks/``, each one task."""
