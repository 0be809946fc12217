"""The host's threefry split is jax.random.split's, bit for bit."""

import jax
import numpy as np

from emjax import _threefry


def test_host_split_equals_jax_random_split():
    keys = [jax.random.key_data(jax.random.key(s)) for s in (0, 7, 2**32 - 1)]
    keys += [jax.random.PRNGKey(11), np.array([0xDEADBEEF, 0x12345678], np.uint32)]
    for key in keys:
        for num in (1, 2, 5, 33):
            got = _threefry.split(np.asarray(key), num)
            want = np.asarray(jax.random.split(jax.numpy.asarray(key, np.uint32), num))
            assert got.dtype == np.uint32 and got.shape == (num, 2)
            np.testing.assert_array_equal(got, want)


def test_host_split_declines_what_it_does_not_reproduce():
    assert _threefry.split(jax.random.key(0), 3) is None  # a typed key: split by jax.random
    assert _threefry.split(np.zeros(3, np.uint32), 3) is None
    assert _threefry.split(np.zeros(2, np.int32), 3) is None


def test_a_program_takes_the_same_restart_keys_split_here_or_not():
    raw = np.asarray(jax.random.key_data(jax.random.key(5)))
    split_here = _threefry.restart_keys(raw, 4)
    assert split_here.shape == (4, 2)
    for key in (split_here, raw):  # split here, or by jax.random in the program
        np.testing.assert_array_equal(_threefry.program_keys(key, 4),
                                      jax.random.split(jax.numpy.asarray(raw), 4))
    typed = jax.random.key(5)
    assert _threefry.restart_keys(typed, 4) is typed  # left to the program
