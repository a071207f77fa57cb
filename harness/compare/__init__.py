"""``attnbench compare``: our variants against the best public implementation of each mechanism,
side by side (``command``), the peers' adapters (``peers``, and ``zoo_peers`` for the later variants)
and one layer measured in a fresh process (``probe``).

Importing the package registers every built-in peer: ``zoo_peers`` adds its peers to ``peers.PEERS``
(it imports ``peers``; ``peers`` does not import it, so there is no import cycle)."""
from attnbench.harness.compare import zoo_peers as zoo_peers
