"""The peers of ``attnbench compare``: one module per variant that has public implementations, each
registering them with ``register_peer(Peer(...))`` when imported (``attnbench.harness.compare.registry``
imports every module here the first time it is read; nothing else lists them).

Each peer is built with random weights (no hub downloads) and the same model dim, heads, head dim and
mechanism settings as ours; ``forward(x (B, N, D), key_padding_mask (B, N) bool, True = real) -> (B, N, D)``.
Peers that only implement the attention core get the same ``nn.Linear`` input/output projections as ours
(``adapters.QKVOut``), so both sides do the same projection work. Their packages are imported only when a
peer is built, and are optional (``pip install .[peers]``). ``attnbench compare --list`` prints every peer,
its packages and whether they are installed.

Adding a peer: a new module here (or a ``register_peer`` call in the module of its variant) and its package
in pyproject's ``peers`` extra. No peer for ``synthesizer``: no maintained PyPI package.
"""
