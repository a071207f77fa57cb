"""``attnbench compare``: our variants against the best public implementation of each mechanism,
side by side (``command``), the peers' adapters (``peers``) and one layer measured in a fresh
process (``probe``)."""
