import errno
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import BlobNotFoundError, FilesystemBlobStore, StorageError


def test_put_open_remove(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    ref = store.put(b"DICM" * 100)
    assert ref.size == 400
    assert ref.sha256 == hashlib.sha256(b"DICM" * 100).hexdigest()
    with store.open(ref.key) as blob:
        assert blob.read() == b"DICM" * 100
    assert store.exists(ref.key)
    assert list(store.keys()) == [ref.key]
    store.remove(ref.key)
    store.remove(ref.key)  # removing twice is fine
    assert not store.exists(ref.key)
    with pytest.raises(BlobNotFoundError):
        store.open(ref.key)


def test_layout_is_hash_prefixed_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    refs = [store.put(bytes([i])) for i in range(20)]
    for ref in refs:
        assert store.path_of(ref.key) == tmp_path / ref.key[:2] / ref.key[2:4] / f"{ref.key}.dcm"
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".dcm"]
    assert leftovers == []
    assert len({ref.key for ref in refs}) == 20


@pytest.mark.parametrize("key", ["../../etc/passwd", "ab/cd", "", "A" * 32, "0" * 31])
def test_keys_that_are_not_ours_are_refused(tmp_path: Path, key: str) -> None:
    store = FilesystemBlobStore(tmp_path)
    with pytest.raises(BlobNotFoundError):
        store.open(key)


def test_full_disk_raises_and_leaves_nothing(tiny_filesystem: Path) -> None:
    store = FilesystemBlobStore(tiny_filesystem)
    kept = store.put(b"x" * 1000)
    with pytest.raises(StorageError) as raised:
        store.put(os.urandom(1024 * 1024))
    assert raised.value.errno == errno.ENOSPC
    files = [p for p in tiny_filesystem.rglob("*") if p.is_file()]
    assert files == [store.path_of(kept.key)]
    with store.open(kept.key) as blob:
        assert blob.read() == b"x" * 1000


def test_put_stream_stores_the_chunks_and_a_failing_source_leaves_nothing(
    tmp_path: Path,
) -> None:
    store = FilesystemBlobStore(tmp_path)
    chunks = [os.urandom(n) for n in (1, 70_000, 0, 1 << 20)]
    ref = store.put_stream(iter(chunks))
    data = b"".join(chunks)
    assert (ref.size, ref.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    with store.open(ref.key) as blob:
        assert blob.read() == data

    def broken() -> Iterator[bytes]:
        yield b"DICM" * 1000
        raise OSError(errno.EIO, "the spool could not be read")

    with pytest.raises(StorageError):
        store.put_stream(broken())

    def interrupted() -> Iterator[bytes]:
        yield b"DICM" * 1000
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.put_stream(interrupted())
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [store.path_of(ref.key)]
