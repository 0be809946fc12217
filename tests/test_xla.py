"""The compiler options of the fits outside the Gaussian-mixture pass plan (emjax._xla)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emjax import _xla

LEVEL_1 = ("xla_backend_optimization_level", 1)
IR = ("xla_cpu_use_fusion_emitters", False)


def test_options_follow_the_backend_table_and_the_size(production_compile_options):
    for kind in _xla.KINDS:
        limit = _xla.CPU.ir_emitters_max_values[kind]
        assert _xla.compiler_options(kind, limit, backend="cpu") == (LEVEL_1, IR)
        assert _xla.compiler_options(kind, limit + 1, backend="cpu") == (LEVEL_1,)
        # an unmeasured backend gets nothing backend-specific
        assert _xla.compiler_options(kind, 1, backend="tpu") == (LEVEL_1,)
    with pytest.raises(ValueError, match="kind must be one of"):
        _xla.compiler_options("gmm", 1)
    # restarts one after the other only where measured (the missing-data fit on CPU)
    assert _xla.sequential_restarts("missing", backend="cpu")
    assert not _xla.sequential_restarts("missing", backend="gpu")
    assert not _xla.sequential_restarts("grid", backend="cpu")
    with pytest.raises(ValueError, match="kind must be one of"):
        _xla.sequential_restarts("gmm")


def test_each_option_set_is_its_own_program_with_the_same_result():
    f = _xla.JitByOptions(lambda x, *, n: jnp.cumsum(jnp.sin(x) * n), static_argnames=("n",))
    x = jnp.linspace(0.0, 3.0, 11)
    plain = f[()](x, n=2)
    small = f[_xla.compiler_options("families", 1, backend="cpu")](x, n=2)
    assert f._cache_size() == 2
    np.testing.assert_allclose(small, plain, rtol=1e-6)
    np.testing.assert_allclose(plain, np.cumsum(np.sin(np.linspace(0.0, 3.0, 11)) * 2),
                               rtol=1e-6)
    f[()](x, n=2)  # the same options and shapes: nothing new
    assert f._cache_size() == 2
    # inside a caller's trace the option-free instance nests
    np.testing.assert_allclose(jax.jit(lambda y: f[()](y, n=2))(x), plain, rtol=1e-6)


def test_the_programs_held_are_bounded():
    f = _xla.JitByOptions(lambda x: x * 2.0, max_programs=2)
    for n in range(1, 6):
        np.testing.assert_allclose(f[()](jnp.ones(n)), 2.0)
        assert f._cache_size() <= 2


def test_the_disk_store_keys_a_program_by_the_configuration_at_the_call():
    """x64 switched in a process (jax.enable_x64, jax.config.update) after a program was kept:
    the same shapes get the program of the current configuration, not the one kept before."""
    f = _xla.JitByOptions(lambda x: (jnp.sum(x), jnp.arange(2) + x.shape[0]))
    x = np.ones(3, np.float32)  # the same aval with x64 on and off
    assert jax.config.jax_compilation_cache_dir  # the suite's disk cache (conftest) is on
    with jax.enable_x64(False):
        narrow = f.call((), (x,), {}, "test_x64")
    wide = f.call((), (x,), {}, "test_x64")  # the suite runs with x64 on
    assert narrow[1].dtype == np.int32 and wide[1].dtype == np.int64


def test_the_disk_store_keys_a_program_by_the_host_cpu(monkeypatch):
    """XLA:CPU compiles for the host's instruction set: a cache shared between machines must
    not hand one's programs to another CPU."""
    from emjax import _compile_cache

    here = _compile_cache._environment()
    assert len(_compile_cache._host_cpu()) == 16
    try:
        monkeypatch.setattr(_compile_cache, "_host_cpu", lambda: "another cpu")
        _compile_cache._build.cache_clear()
        assert _compile_cache._environment() != here
    finally:
        monkeypatch.undo()
        _compile_cache._build.cache_clear()
    assert _compile_cache._environment() == here


@pytest.fixture
def jax_cache_keeps_all():
    """JAX's disk cache (the suite's, conftest) written for programs of any compile time (the
    suite's keeps those over 0.2 s), so a test sees what it would keep; its directory."""
    before = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield jax.config.jax_compilation_cache_dir
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before)


def test_a_program_kept_whole_on_disk_gets_no_second_copy_in_jaxs_cache(jax_cache_keeps_all):
    """The store keeps a small fit's program whole; JAX's cache writing its own copy too cost a
    first fit 0.1-0.2 s. Other programs still go to JAX's cache."""
    import os

    from emjax import _compile_cache

    cache = jax_cache_keeps_all
    store = _compile_cache.executable_directory()

    def kept_whole(x):
        return jnp.cumsum(x) * 3.0

    def not_kept(x):
        return jnp.cumsum(x) * 5.0

    f = _xla.JitByOptions(kept_whole)
    f.compile((), (jax.ShapeDtypeStruct((7,), np.float32),), {}, "test_no_copy")
    jax.jit(not_kept).lower(jax.ShapeDtypeStruct((7,), np.float32)).compile()
    names = os.listdir(cache)
    assert any(n.startswith("jit_not_kept") for n in names)
    assert not any(n.startswith("jit_kept_whole") for n in names)
    assert any(n.startswith("test_no_copy-") for n in os.listdir(store))


def test_a_program_that_jaxs_cache_supplies_is_not_written_to_the_store(jax_cache_keeps_all):
    """A program JAX's cache already had (written there by an earlier emjax, which let JAX keep
    a copy) is used but not written to the store: jaxlib re-serialises a loaded program without
    all of its kernels, and a later process loading that copy would fail."""
    import os

    from emjax import _compile_cache

    def from_jaxs_cache(x):
        return jnp.cumsum(x) * 7.0

    spec = jax.ShapeDtypeStruct((5,), np.float32)
    jax.jit(from_jaxs_cache).lower(spec).compile()  # JAX's cache keeps it
    jax.clear_caches()  # as a new process: only the disk has it
    jitted = jax.jit(from_jaxs_cache)
    slot = _compile_cache.lookup(jitted, (spec,), {}, {}, "test_from_jax")
    assert slot is not None and slot.compiled is None
    compiled, fresh = _compile_cache.compile_lowered(jitted.lower(spec), kept=True)
    assert not fresh
    np.testing.assert_allclose(compiled(np.ones(5, np.float32)), 7.0 * np.arange(1, 6))
    slot.keep(compiled, fresh)
    assert not os.path.exists(slot.path)


def test_a_fit_not_kept_whole_still_goes_to_jaxs_cache(monkeypatch, jax_cache_keeps_all):
    """Large data (here: the row bound of padding lowered to 0) runs unpadded, a program emjax's
    store does not keep: JAX's disk cache keeps it, so a new process skips its compilation."""
    import os

    import emjax
    from emjax import _sizes

    monkeypatch.setattr(_sizes, "PAD_MAX_ROWS", 0)
    X = np.random.default_rng(0).normal(size=(53, 3))  # a shape no other test fits
    before = set(os.listdir(jax_cache_keeps_all))
    emjax.fit(X, 2, max_iter=5)
    new = set(os.listdir(jax_cache_keeps_all)) - before
    assert any(n.startswith("jit__fit_program") for n in new)


def test_the_store_deletes_its_least_recently_used_programs_past_its_bound(tmp_path):
    """Past the bound, the programs used least recently go first (a load touches a program);
    an unfinished write older than an hour goes; nothing else in the directory is touched."""
    import os

    from emjax import _compile_cache

    def program(name, size, age):
        path = tmp_path / f"{name}-{'ab' * 20}.pkl"
        path.write_bytes(b"x" * size)
        os.utime(path, (1e9 - age, 1e9 - age))
        return path

    oldest, older, newest = program("fit", 400, 30), program("fit_init", 300, 20), \
        program("grid", 300, 10)
    mine = tmp_path / "notes.pkl"
    mine.write_bytes(b"y" * 5000)
    stale, fresh = tmp_path / ".tmp-old", tmp_path / ".tmp-new"
    for path, age in ((stale, 7200), (fresh, 60)):
        path.write_bytes(b"z")
        os.utime(path, (1e9 - age, 1e9 - age))
    deleted = _compile_cache.trim_store(str(tmp_path), 700, keep=str(newest), now=1e9)
    assert sorted(deleted) == sorted([str(stale), str(oldest)])
    assert older.exists() and newest.exists() and mine.exists() and fresh.exists()
    # the file just written is kept even when it alone passes the bound
    assert _compile_cache.trim_store(str(tmp_path), 0, keep=str(newest), now=1e9) == [
        str(older)]
    assert newest.exists() and mine.exists()
    with pytest.raises(ValueError, match="max_bytes"):
        _compile_cache.enable_disk_cache(str(tmp_path), max_bytes=-1)


def test_a_program_loaded_from_the_store_counts_as_used(jax_cache_keeps_all):
    """Loading a program from the store refreshes its modification time, which orders the
    store's deletions."""
    import os

    from emjax import _compile_cache

    def touched(x):
        return jnp.cumsum(x) * 11.0

    spec = (jax.ShapeDtypeStruct((3,), np.float32),)
    slot = _compile_cache.lookup(jax.jit(touched), spec, {}, {}, "test_touch")
    slot.keep(*_compile_cache.compile_lowered(jax.jit(touched).lower(*spec), kept=True))
    os.utime(slot.path, (1e9, 1e9))
    again = _compile_cache.lookup(jax.jit(touched), spec, {}, {}, "test_touch")  # a new memo
    assert again.compiled is not None
    np.testing.assert_allclose(again.compiled(np.ones(3, np.float32)), [11.0, 22.0, 33.0])
    assert os.path.getmtime(slot.path) > 1e9 + 1
