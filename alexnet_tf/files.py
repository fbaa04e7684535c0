"""Writing files so that a reader never sees half of one, and a failure leaves nothing behind.

Every file or directory the package writes for a user (configs, statistics, indexes,
SavedModels, prepared datasets) is first written under a staging name beside its
destination, then renamed into place: a rename within one filesystem is atomic, so an
interrupted write leaves the previous version, or nothing, never a torn one.
"""

import contextlib
import os
import shutil

import tensorflow as tf

STAGING_SUFFIX = ".partial"


def staging_path(path):
    """Where `path` is written before it is renamed into place: beside it, so that the
    rename stays on one filesystem, and named after this process, so that two writers
    never share one."""
    return f"{os.path.normpath(path)}{STAGING_SUFFIX}-{os.getpid()}"


def write_bytes_atomically(path, data):
    """Writes `data` to `path` (local or any tf.io.gfile filesystem) in one rename."""
    directory = os.path.dirname(path)
    if directory:
        tf.io.gfile.makedirs(directory)
    staging = staging_path(path)
    try:
        with tf.io.gfile.GFile(staging, "wb") as f:
            f.write(data)
        tf.io.gfile.rename(staging, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.remove(staging)


def write_text_atomically(path, text):
    write_bytes_atomically(path, text.encode())


@contextlib.contextmanager
def staged_directory(path, check_replaceable=None):
    """Yields a fresh staging directory that becomes `path` when the block ends.

    An existing `path` is replaced only if `check_replaceable(path)` is given and
    returns (it raises for what must not be replaced): nothing the caller has not
    vouched for is ever deleted. The old directory is moved aside before the new one
    is renamed into place, and deleted after. On any error the staging directory is
    removed and `path` is left as it was.
    """
    if os.path.lexists(path):
        # Refused before any work, and again at the end in case path appeared since.
        if check_replaceable is None:
            raise FileExistsError(f"{path} already exists.")
        check_replaceable(path)
    staging = staging_path(path)
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        yield staging
        if not os.path.lexists(path):
            os.replace(staging, path)
            return
        if check_replaceable is None:
            raise FileExistsError(f"{path} already exists.")
        check_replaceable(path)
        retired = f"{os.path.normpath(path)}.replaced-{os.getpid()}"
        os.replace(path, retired)
        os.replace(staging, path)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
