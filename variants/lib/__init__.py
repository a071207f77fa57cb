"""The code attention variants share (block layouts and their kernels, the SDPA and CPU flash paths,
kernel notes, the naive reference the tests compare against). Not components: the registry imports
only the modules directly in ``variants/``, each one mechanism."""
