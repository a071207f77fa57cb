"""``attnbench compare``: our variants against the best public implementation of each mechanism, side by
side (``command``, and the modules it names), and one layer measured in a fresh process (``probe``).

The public implementations ("peers") are the modules of ``peers``, one per variant, each registering its
peers in ``registry.PEERS`` when the registry first imports them; ``adapters`` holds what their adapters
share. ``attnbench compare --list`` prints every peer with its packages."""
