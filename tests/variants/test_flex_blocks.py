"""The two kernels of the block-sparse layouts (``window``, ``sparse``, ``local``): gather and FlexAttention.

- flex equals gather, forward, on CPU in eval mode (sparse's random blocks are then fixed), in
  float64 (eager FlexAttention takes it on CPU) and float32, with padding per batch element, at
  lengths of several FlexAttention blocks (128 tokens) that are not a multiple of one;
- the BlockMask is built from the layout's blocks, never token by token: exact (the pairs it
  lists, with the mask_mod inside partial ones, give the layout's token mask; full blocks hold
  allowed pairs only), of work O(B (N/128)^2 + B N) rather than create_block_mask's B N^2, and
  without host reads. Eager FlexAttention ignores the block lists (it evaluates the mask_mod
  everywhere), so they are checked against the token mask directly, and once through inductor's
  compiled CPU kernel, which reads them (``ATTNBENCH_FLEX_COMPILE=1``);
- the gather path's guarantees: rows with no allowed key are exactly zero and no kernel sees them,
  and a forward makes no host round trip (on CUDA each would be a sync), training included;
- the kernel choice: auto picks gather on CPU and flex on CUDA (``CHOOSE_AS_ON_CUDA`` takes that
  branch on a CPU), and gather where Triton would lack a C compiler or Python.h (faked here),
  saying why; an explicit flex there, on CPU in training, or with inputs that need gradients,
  raises a clear error.
What does not run on CPU: FlexAttention's backward (torch 2.13 has none on CPU) and its compiled
CUDA kernels; ``test_flex_matches_gather_on_cuda`` checks forward and gradients there, skipped
without a GPU.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_toolchain import fake_toolchain
from torch.nn.attention import flex_attention as torch_flex
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from attnbench.harness.core import toolchain
from attnbench.harness.core.registry import dataclass_schema
from attnbench.variants import build_attention
from attnbench.variants.lib import block_dense, flash_cpu, flex_blocks, kernels
from attnbench.variants.lib.flex_blocks import choose_kernel, flex_importable, kernel_choice
from attnbench.variants.local import LocalConfig
from attnbench.variants.sparse import SparseConfig
from attnbench.variants.window import WindowConfig

#: the longest input these tests build layers for (the variants here do not use it)
MAX_LEN = 4096

B, H, D = 3, 2, 4

WINDOW_LAYOUTS = [  # one-sided window, block, global tokens (negatives from each element's real end)
    dict(window=0, block_size=4, global_tokens=()),
    dict(window=3, block_size=4, global_tokens=(0, -1)),
    dict(window=5, block_size=2, global_tokens=(3, -2, -100)),
    dict(window=6, block_size=16, global_tokens=(0, 0)),
]
SPARSE_LAYOUTS = [
    dict(block_size=4, window_blocks=1, random_blocks=0, strided_every=0, global_blocks=()),
    dict(block_size=3, window_blocks=0, random_blocks=0, strided_every=4, global_blocks=(0,)),
    dict(block_size=4, window_blocks=0, random_blocks=2, strided_every=0, global_blocks=(0,)),
    dict(block_size=5, window_blocks=1, random_blocks=2, strided_every=3, global_blocks=(1, -1)),
]
LAYOUTS = [("window", p) for p in WINDOW_LAYOUTS] + [("sparse", p) for p in SPARSE_LAYOUTS]


def layer(name, params, kernel, dtype=torch.float64, head_dim=D):
    return build_attention(name, H * head_dim, H, {**params, "kernel": kernel}, max_len=MAX_LEN).to(dtype).eval()


def pair(name, params, dtype=torch.float64, head_dim=D):
    """A gather layer and a flex layer with the same state (sparse: the same layer seed, so the same layout)."""
    gather, flex = (layer(name, params, kernel, dtype, head_dim) for kernel in ("gather", "flex"))
    flex.load_state_dict(gather.state_dict())
    return gather, flex


def qkv(n, dtype=torch.float64, seed=0, head_dim=D, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, head_dim, generator=g, dtype=dtype).to(device) for _ in range(3)]


def lengths_mask(lengths, n, device="cpu"):
    """Per element: ``lengths`` real tokens, then padding; a length of 0 is an all-padding element."""
    return (torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]).to(device)


def empty_rows(attention, n, mask):
    """(B, N) True where a query has no allowed real key under the layer's layout."""
    return ~(attention.dense_mask(n, mask) & mask[:, None, :]).any(-1)


@pytest.mark.parametrize("name,params", LAYOUTS)
def test_flex_equals_gather_in_float64(name, params):
    n = 29 if name == "window" else 41
    mask = lengths_mask([n, n - 12, 0], n)
    gather, flex = pair(name, params)
    q, k, v = qkv(n, seed=len(params))
    want, got = gather.attend(q, k, v, mask), flex.attend(q, k, v, mask)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert not got[empty_rows(flex, n, mask)[:, None].expand(-1, H, -1)].any(), "rows without a key are zero"


@pytest.mark.parametrize("name,params", [LAYOUTS[1], LAYOUTS[-1]])
def test_flex_equals_gather_in_float32(name, params):
    n = 37
    mask = lengths_mask([n, 20, 1], n)
    gather, flex = pair(name, params, torch.float32)
    q, k, v = qkv(n, torch.float32, seed=3)
    torch.testing.assert_close(flex.attend(q, k, v, mask), gather.attend(q, k, v, mask), rtol=0, atol=1e-5)


def test_kernel_is_a_config_field_with_three_choices():
    for config in (WindowConfig, SparseConfig, LocalConfig):
        prop = dataclass_schema(config)["properties"]["kernel"]
        assert prop["enum"] == ["auto", "gather", "flex"] and prop["default"] == "auto"
        assert "no FlexAttention backward on CPU" in prop["description"]
    assert build_attention("sparse", H * D, H, {"kernel": "flex"}, max_len=MAX_LEN).cfg.kernel == "flex"


@pytest.mark.parametrize("name", ["window", "sparse"])
def test_auto_picks_gather_on_cpu_and_trains(name):
    attention = build_attention(name, H * D, H, {}, max_len=MAX_LEN).double()
    assert attention.cfg.kernel == "auto"
    for mode in (True, False):
        assert attention.train(mode).kernel_used("cpu") == "gather"
    q, k, v = (t.requires_grad_() for t in qkv(24))
    attention.train().attend(q, k, v, lengths_mask([24, 10, 3], 24)).sum().backward()
    assert q.grad is not None


@pytest.mark.parametrize("name", ["window", "sparse"])
def test_flex_on_cpu_with_gradients_raises_a_clear_error(name):
    attention = layer(name, {}, "flex")
    q, k, v = qkv(16)
    mask = lengths_mask([16, 8, 1], 16)
    reason = r"FlexAttention has no backward pass on CPU in torch .*; use kernel: gather \(or auto\)"
    with pytest.raises(RuntimeError, match=reason):
        attention.train().kernel_used("cpu")
    with pytest.raises(RuntimeError, match=reason):
        attention.train().attend(q, k, v, mask)
    with pytest.raises(RuntimeError, match=reason):  # eval mode, but the inputs want gradients
        attention.eval().attend(q.requires_grad_(), k, v, mask)


def test_kernel_choice_on_cuda_and_with_dropout(monkeypatch, tmp_path):
    """The choice is device logic only, so it is checked here without a GPU (on a machine with what Triton
    needs: faked, so that the answer does not depend on this one)."""
    fake_toolchain(monkeypatch, tmp_path, "gcc")
    cuda = dict(device=torch.device("cuda"), dtype=torch.float32, head_dim=16, training=True, dropout=0.0,
                needs_grad=True)
    assert choose_kernel("auto", **cuda) == ("flex" if flex_importable() else "gather")
    assert choose_kernel("auto", **{**cuda, "dtype": torch.float64}) == "gather"
    assert choose_kernel("auto", **{**cuda, "head_dim": 8}) == "gather"  # below what Triton's tl.dot takes
    assert choose_kernel("gather", **cuda) == "gather"
    # FlexAttention has no attention dropout: gather runs in training, flex again in eval
    assert choose_kernel("flex", **{**cuda, "dropout": 0.1}) == "gather"
    assert choose_kernel("flex", **{**cuda, "dropout": 0.1, "training": False, "needs_grad": False}) == "flex"
    with pytest.raises(ValueError, match="auto, gather or flex"):
        choose_kernel("dense", **cuda)


def nan_in_empty_rows(real_sdpa, injected):
    """SDPA as some kernels behave: NaN in the rows whose mask allows no key (and a note of each such call)."""
    def sdpa(q, k, v, attn_mask=None, **kwargs):
        out = real_sdpa(q, k, v, attn_mask=attn_mask, **kwargs)
        if attn_mask is None:
            return out
        empty = ~attn_mask.any(-1)[..., None]
        injected.append(bool(empty.any()))
        return out.masked_fill(empty, float("nan"))
    return sdpa


@pytest.mark.parametrize("name,params", [
    ("window", dict(window=1, block_size=4, global_tokens=())),
    ("window", dict(window=1, block_size=4, global_tokens=(0,))),
    ("sparse", dict(block_size=4, window_blocks=0, random_blocks=0, global_blocks=())),
    ("sparse", dict(block_size=4, window_blocks=0, random_blocks=1, global_blocks=(0,))),
])
def test_gather_gives_zeros_in_rows_without_keys_and_no_kernel_sees_them(name, params, monkeypatch):
    """Rows with no allowed key never reach SDPA (``sdpa.masked_sdpa``; tests/variants/test_empty_rows.py holds every
    variant to it): a kernel that gave NaN there changes nothing, and those rows are exactly zero."""
    n = 16
    mask = lengths_mask([n, 5, 0], n)  # the short element's far rows and the empty element see no real key
    # the gather path into SDPA (on the CPU the band otherwise takes the flash path, which
    # tests/test_band_flash_path.py holds equal to this one, empty rows included)
    monkeypatch.setattr(flash_cpu, "usable", lambda *a: False)
    monkeypatch.setattr(block_dense, "MAX_TOKENS", 0)  # nor, at this length, the dense path
    attention = layer(name, params, "gather")
    q, k, v = qkv(n)
    clean = attention.attend(q, k, v, mask)
    injected = []
    monkeypatch.setattr(F, "scaled_dot_product_attention", nan_in_empty_rows(F.scaled_dot_product_attention,
                                                                             injected))
    out = attention.attend(q, k, v, mask)
    assert injected and not any(injected), "SDPA ran, and never on a row without an allowed key"
    assert torch.isfinite(out).all()
    empty = empty_rows(attention, n, mask)[:, None].expand(-1, H, -1)
    assert empty.any() and not out[empty].any()
    assert torch.equal(out, clean)


FORBIDDEN = {"tensor", "as_tensor", "item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero",
             "cpu", "numpy"}


class HostRoundTrips(TorchFunctionMode):
    """Records the torch calls that read a tensor on the host or build one from host data: on CUDA
    each is a sync (or a blocking copy). Calls made inside torch's own functions are not seen."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in FORBIDDEN:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name,params,training", [
    ("window", WINDOW_LAYOUTS[2], False), ("window", WINDOW_LAYOUTS[2], True),
    ("sparse", SPARSE_LAYOUTS[3], False),
    ("sparse", SPARSE_LAYOUTS[3], True),  # training draws its layout seed as a tensor: never read on the host
])
def test_gather_forward_makes_no_host_round_trip(name, params, training):
    attention = layer(name, params, "gather").train(training)
    q, k, v = qkv(30)
    mask = lengths_mask([30, 12, 0], 30)
    with HostRoundTrips() as calls:
        attention.attend(q, k, v, mask)
    assert calls.seen == []


def test_sparse_layer_seed_follows_a_loaded_checkpoint():
    """The seed is read as a Python int once per load, not per forward; the copy must follow the buffer."""
    torch.manual_seed(0)
    a = layer("sparse", SPARSE_LAYOUTS[2], "gather")
    b = layer("sparse", SPARSE_LAYOUTS[2], "gather")
    mask = lengths_mask([40, 40, 40], 40)
    assert not torch.equal(a.dense_mask(40, mask), b.dense_mask(40, mask))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.dense_mask(40, mask), b.dense_mask(40, mask))
    assert "global_block_positions" not in a.state_dict()


# ---------------------------------------------------------------- the BlockMask, from the layout's blocks

def block_lists(num: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """BlockMask's ordered lists ((B, 1, nF) counts, (B, 1, nF, nF) indices) -> (B, nF, nF) bool."""
    nf = idx.shape[-1]
    listed = torch.arange(nf) < num[..., None]
    dense = torch.zeros(*idx.shape[:-1], nf + 1, dtype=torch.bool)
    dense.scatter_(-1, torch.where(listed, idx.long(), nf), True)
    return dense[:, 0, :, :nf]


def check_block_mask(n: int, tables, mask_mod, bsz: int, flex_block: int) -> tuple[int, int]:
    """What a kernel that reads the lists computes is the mask_mod's token mask: the partial pairs with the
    mask_mod inside, the full ones whole, nothing elsewhere. Returns (partial, full) block counts."""
    exact = torch_flex.create_mask(mask_mod, bsz, None, n, n, device="cpu")[:, 0]
    partial, full = block_lists(*tables[:2]), block_lists(*tables[2:])
    assert not (partial & full).any(), "a pair is listed once"

    def tokens(blocks):
        return blocks.repeat_interleave(flex_block, 1).repeat_interleave(flex_block, 2)[:, :n, :n]

    assert not (tokens(full) & ~exact).any(), "a full block holds only allowed pairs"
    assert torch.equal((tokens(partial) & exact) | tokens(full), exact), "every allowed pair is in a listed block"
    return int(partial.sum()), int(full.sum())


@pytest.mark.slow
@pytest.mark.parametrize("flex_block", [8, 128])
def test_block_mask_from_the_layout_is_exact(flex_block):
    """Random layouts (band, block table, both, block diagonal), padding, empty elements and global tokens,
    lengths that are not a multiple of the flex block and layout blocks that straddle two of them."""
    gen = torch.Generator().manual_seed(0)
    counts = [0, 0]
    for trial in range(24):
        bsz, block = 3, int(torch.randint(1, 40, (), generator=gen))
        nb = int(torch.randint(1, 300 // block + 2, (), generator=gen))
        n = nb * block
        key_mask = lengths_mask([n, int(torch.randint(0, n + 1, (), generator=gen)), 0], n)
        is_global = torch.rand(bsz, n, generator=gen) < (0.01 if trial % 3 else 0.0)
        kind = trial % 4
        band = int(torch.randint(0, 3 * flex_block, (), generator=gen)) if kind in (0, 2) else None
        pairs = (torch.rand(bsz, nb, nb, generator=gen) < 0.3) if kind in (1, 2) else None
        if kind == 3:
            pairs = torch.eye(nb, dtype=torch.bool)[None]  # local's layout, shared by the batch
        tables = flex_blocks.layout_block_mask(n, key_mask=key_mask, is_global=is_global, block=block,
                                               block_pairs=pairs, band=band, flex_block=flex_block)
        mask_mod = flex_blocks.layout_mask_mod(key_mask, is_global, block,
                                               None if pairs is None else pairs.expand(bsz, -1, -1), band)
        for i, c in enumerate(check_block_mask(n, tables, mask_mod, bsz, flex_block)):
            counts[i] += c
    assert counts[0] and counts[1], "partial and full blocks both occur"


class CapturedBlockMasks:
    """Records the arguments and lists of each BlockMask a flex forward builds."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = flex_blocks.layout_block_mask

        def spy(n, **kwargs):
            tables = real(n, **kwargs)
            self.calls.append((n, kwargs, tables))
            return tables
        monkeypatch.setattr(flex_blocks, "layout_block_mask", spy)

        def no_token_by_token(*args, **kwargs):
            raise AssertionError("create_block_mask evaluates the mask_mod on B x N x N pairs")
        monkeypatch.setattr(torch_flex, "create_block_mask", no_token_by_token)

    def check(self) -> list[tuple[int, int]]:
        """``check_block_mask`` on each BlockMask built; their (partial, full) block counts."""
        assert self.calls
        counts = []
        for n, kw, tables in self.calls:
            bsz = kw["key_mask"].shape[0]
            pairs = kw["block_pairs"]
            mask_mod = flex_blocks.layout_mask_mod(kw["key_mask"], kw["is_global"], kw["block"],
                                                   None if pairs is None else pairs.expand(bsz, -1, -1), kw["band"])
            counts.append(check_block_mask(n, tables, mask_mod, bsz, flex_blocks.FLEX_BLOCK))
        return counts


LONG_LAYOUTS = [
    ("window", dict(window=40, block_size=16, global_tokens=(0, -1))),
    ("window", dict(window=150, block_size=50, global_tokens=())),  # band wider than a flex block: full blocks
    ("sparse", dict(block_size=50, window_blocks=1, random_blocks=2, strided_every=3, global_blocks=(1, -1))),
    ("sparse", dict(block_size=24, window_blocks=0, random_blocks=1, global_blocks=())),
    ("local", dict(block_size=50)),
    ("local", dict(block_size=200)),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,params", LONG_LAYOUTS)
def test_flex_equals_gather_over_several_flex_blocks(name, params, monkeypatch):
    """389 tokens: three whole flex blocks and a short one; padding, an all-padding element, global tokens.
    The lists of each BlockMask are checked against the layout (eager FlexAttention does not read them)."""
    n = 389
    mask = lengths_mask([n, 200, 0], n)
    gather, flex = pair(name, params)
    q, k, v = qkv(n, seed=7)
    captured = CapturedBlockMasks(monkeypatch)
    got = flex.attend(q, k, v, mask)
    torch.testing.assert_close(got, gather.attend(q, k, v, mask), rtol=0, atol=1e-12)
    captured.check()


class CountedElements(TorchDispatchMode):
    """The elements of every tensor the torch operations inside produce: the work, whatever the kernel."""

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.elements += sum(t.numel() for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


def test_block_mask_work_grows_with_blocks_not_token_pairs():
    """Building a window (w = 64) or a sparse (64-token blocks) BlockMask at 1K, 4K and 16K tokens: the work
    stays within a constant of B((N/128)^2 + N) elements, where create_block_mask makes B N^2 and more
    (about 1,000 of these units at 1K, 16,000 at 16K). A scaling shape, not a time."""
    bsz = 2
    for n in (1024, 4096, 16384):
        key_mask = lengths_mask([n, n - 300], n)
        is_global = torch.zeros(bsz, n, dtype=torch.bool)
        is_global[:, 0] = True
        nb = n // 64
        pairs = torch.rand(bsz, nb, nb, generator=torch.Generator().manual_seed(n)) < 0.05
        for layout in (dict(band=64), dict(block_pairs=pairs)):
            with CountedElements() as count:
                tables = flex_blocks.layout_block_mask(n, key_mask=key_mask, is_global=is_global, block=64, **layout)
                torch_flex.BlockMask.from_kv_blocks(*tables, BLOCK_SIZE=flex_blocks.FLEX_BLOCK, seq_lengths=(n, n))
            unit = bsz * ((n / flex_blocks.FLEX_BLOCK) ** 2 + n)
            assert count.elements < 100 * unit, (n, layout.keys(), count.elements / unit)
            assert count.elements < bsz * n * n / 8


def test_block_mask_building_makes_no_host_round_trip():
    n, bsz = 390, 3
    key_mask = lengths_mask([n, 200, 0], n)
    is_global = torch.zeros(bsz, n, dtype=torch.bool)
    is_global[:, 5] = True
    pairs = torch.rand(bsz, n // 30, n // 30) < 0.5
    for layout in (dict(band=40, block=10), dict(block_pairs=pairs, block=30)):
        with HostRoundTrips() as calls:
            tables = flex_blocks.layout_block_mask(n, key_mask=key_mask, is_global=is_global, **layout)
            torch_flex.BlockMask.from_kv_blocks(*tables, BLOCK_SIZE=flex_blocks.FLEX_BLOCK, seq_lengths=(n, n))
        assert calls.seen == []


@pytest.mark.slow
@pytest.mark.skipif(toolchain.missing("cpu") is not None, reason="inductor's CPU code needs a C++ compiler, Python.h")
def test_compiled_flex_on_cpu_reads_the_block_lists(monkeypatch):
    """The compiled branch (CUDA's) on a CPU: ``ATTNBENCH_FLEX_COMPILE=1`` runs torch.compile(flex_attention)
    through inductor, whose kernel skips unlisted blocks and the mask_mod in full ones. A window of 200 over
    400 tokens has full, partial and skipped pairs and a short last block; an all-padding element and rows
    far past a short element's end have no key (inductor's CPU kernel returns no log-sum-exp: its own zeros
    there). A new padding reuses the compiled kernel. About 20 s (inductor compiles C++), once per process."""
    monkeypatch.setenv(flex_blocks.COMPILE_ENV, "1")
    n = 400
    gather, flex = pair("window", dict(window=200, block_size=16, global_tokens=(0, -1)), torch.float32, head_dim=16)
    q, k, v = qkv(n, torch.float32, seed=5, head_dim=16)
    captured = CapturedBlockMasks(monkeypatch)
    with torch._inductor.config.patch(compile_threads=1):  # no pool of compile workers to start: faster here
        for lengths in ([n, 150, 0], [n, 390, 20]):
            mask = lengths_mask(lengths, n)
            with torch.no_grad():
                got = flex.attend(q, k, v, mask)
            torch.testing.assert_close(got, gather.attend(q, k, v, mask), rtol=1e-5, atol=1e-5)
    assert all(partial and full for partial, full in captured.check())


# ---------------------------------------------------------------- the kernel choice where Triton lacks its tools

def cuda_like(**overrides):
    """A choice as ``kernel_for`` makes it for a float32, head_dim 16 forward in eval mode without gradients."""
    return dict(dict(device=torch.device("cpu"), dtype=torch.float32, head_dim=16, training=False, dropout=0.0,
                     needs_grad=False), **overrides)


def test_auto_falls_back_to_gather_where_triton_lacks_a_compiler_or_headers(monkeypatch, tmp_path):
    monkeypatch.setattr(flex_blocks, "CHOOSE_AS_ON_CUDA", True)  # the CUDA branch, on this CPU
    fake_toolchain(monkeypatch, tmp_path, "gcc")
    assert kernel_choice("auto", **cuda_like()) == ("flex", "auto on cuda")
    fake_toolchain(monkeypatch, tmp_path, "g++")  # a C++ compiler is not what Triton's launcher needs
    kernel, why = kernel_choice("auto", **cuda_like())
    assert kernel == "gather"
    assert why.startswith("auto: compiled FlexAttention cannot run here: no C compiler (gcc or clang on PATH")
    fake_toolchain(monkeypatch, tmp_path, "gcc", headers=False)
    kernel, why = kernel_choice("auto", **cuda_like())
    assert kernel == "gather" and "no Python.h in " in why
    monkeypatch.setattr(flex_blocks, "CHOOSE_AS_ON_CUDA", False)
    assert kernel_choice("auto", **cuda_like()) == ("gather", "auto on cpu (flex only on CUDA, where it runs compiled)")


def test_the_compiled_branch_is_the_gpus_or_forced_on_a_cpu(monkeypatch):
    monkeypatch.delenv(flex_blocks.COMPILE_ENV, raising=False)
    assert flex_blocks.flex_compiled(torch.device("cuda", 0)) and flex_blocks.flex_compiled("cuda")
    assert not flex_blocks.flex_compiled(torch.device("cpu")) and not flex_blocks.flex_compiled("cpu")
    monkeypatch.setenv(flex_blocks.COMPILE_ENV, "1")
    assert flex_blocks.flex_compiled(torch.device("cpu"))


def test_explicit_flex_without_tritons_tools_raises_naming_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(flex_blocks, "CHOOSE_AS_ON_CUDA", True)
    fake_toolchain(monkeypatch, tmp_path, headers=False)
    with pytest.raises(RuntimeError, match=r"kernel: flex runs FlexAttention compiled on cuda, which needs what this "
                                           r"machine lacks: no C compiler .*; no Python.h in .*Use kernel: gather"):
        choose_kernel("flex", **cuda_like())
    # compiled on this CPU (ATTNBENCH_FLEX_COMPILE=1): inductor's tools, a C++ compiler
    monkeypatch.setattr(flex_blocks, "CHOOSE_AS_ON_CUDA", False)
    monkeypatch.setenv(flex_blocks.COMPILE_ENV, "1")
    fake_toolchain(monkeypatch, tmp_path, "gcc")
    with pytest.raises(RuntimeError, match=r"compiled on cpu, .*no C\+\+ compiler \(g\+\+ on PATH"):
        choose_kernel("flex", **cuda_like())
    monkeypatch.delenv(flex_blocks.COMPILE_ENV)
    assert choose_kernel("flex", **cuda_like()) == "flex"  # eager on the CPU: nothing to compile


@pytest.mark.slow
@pytest.mark.parametrize("name,params", [LONG_LAYOUTS[0], LONG_LAYOUTS[2], LONG_LAYOUTS[4]])
def test_layers_choose_as_on_a_gpu_and_fall_back_without_a_compiler(name, params, monkeypatch, tmp_path):
    """``kernel: auto`` layers as on CUDA: flex (forward equal to gather), and gather where Triton would have
    no C compiler, with the reason for records."""
    monkeypatch.setattr(flex_blocks, "CHOOSE_AS_ON_CUDA", True)
    n = 200
    auto = layer(name, params, "auto", torch.float32, head_dim=16)
    gather = layer(name, params, "gather", torch.float32, head_dim=16)
    gather.load_state_dict(auto.state_dict())
    q, k, v = qkv(n, torch.float32, head_dim=16)
    mask = lengths_mask([n, 120, 0], n)
    ran = []
    real = flex_blocks.flex_block_sparse_attention

    def spy(*args, **kwargs):
        ran.append("flex")
        return real(*args, **kwargs)
    monkeypatch.setattr(f"attnbench.variants.{name}.flex_block_sparse_attention", spy)
    fake_toolchain(monkeypatch, tmp_path, "gcc")
    assert auto.kernel_and_reason("cpu") == ("flex", "auto on cuda")
    with torch.no_grad(), kernels.KernelLog() as log:
        torch.testing.assert_close(auto.attend(q, k, v, mask), gather.attend(q, k, v, mask), rtol=1e-5, atol=1e-5)
    assert ran == ["flex"]
    assert "flex" in log.kernels and log.kernels["flex"].endswith("(auto on cuda)")  # for the record
    fake_toolchain(monkeypatch, tmp_path)
    kernel, why = auto.kernel_and_reason("cpu")
    assert kernel == "gather" and "no C compiler" in why
    with torch.no_grad():
        auto.attend(q, k, v, mask)
    assert ran == ["flex"], "gather ran"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled FlexAttention and its backward need CUDA")
@pytest.mark.parametrize("name,params,n", [(*LAYOUTS[i], 61) for i in (1, 2, -1, -2)] + [
    (*LONG_LAYOUTS[1], 389), (*LONG_LAYOUTS[2], 389)])  # several flex blocks, full ones among them
def test_flex_matches_gather_on_cuda(name, params, n):
    """Forward and gradients in float32 (head_dim 16: compiled FlexAttention's smallest), and auto picks flex."""
    head_dim = 16
    gather, flex = (t.cuda() for t in pair(name, params, torch.float32, head_dim))
    auto = layer(name, params, "auto", torch.float32, head_dim).cuda()
    assert auto.kernel_used("cuda") == auto.train().kernel_used("cuda") == "flex"
    mask = lengths_mask([n, 30, 0], n, "cuda")
    weight = torch.randn(B, H, n, head_dim, generator=torch.Generator().manual_seed(1)).cuda()
    results = []
    for attention in (gather, flex):
        q, k, v = (t.requires_grad_() for t in qkv(n, torch.float32, seed=2, head_dim=head_dim, device="cuda"))
        out = attention.attend(q, k, v, mask)
        results.append((out, *torch.autograd.grad((out * weight).sum(), (q, k, v))))
    for want, got in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs are a CUDA matter")
@pytest.mark.parametrize("name,params", [LAYOUTS[2], LAYOUTS[-1]])
def test_gather_forward_on_cuda_does_not_sync(name, params):
    attention = layer(name, params, "gather", torch.float32).cuda()
    q, k, v = qkv(61, torch.float32, device="cuda")
    mask = lengths_mask([61, 30, 0], 61, "cuda")
    attention.attend(q, k, v, mask)  # warm up: lazy initialisation may sync once
    torch.cuda.set_sync_debug_mode("error")
    try:
        attention.attend(q, k, v, mask)
    finally:
        torch.cuda.set_sync_debug_mode("default")
