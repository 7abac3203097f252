"""file_listing.py on local disk and on GCS (the emulators): folders, globs, symlinks, odd entries, paging.

GCS paging is tested on fake-gcs-server: gcp-storage-emulator ignores `maxResults` and answers every listing in one
page, so it could not show that the listing follows page tokens.
"""

import itertools
import json
import os
import shutil
import tempfile
import textwrap
from pathlib import Path

import pytest

from beam_pipelines import file_listing
from tests.conftest import point_gcs_at
from tests.gcs_servers import FaultyProxy, fake_gcs_bucket_fixture, fake_gcs_server_fixture  # noqa: F401
from tests.trainer.datasets import run_python
from trainer import storage


def _touch(path, content: bytes = b"x") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return str(path)


def _listed(pattern) -> dict:
    """path -> problem (None for a readable file) of everything list_files yields; fails on a path listed twice or on
    a walk that does not end (at most 1,000 entries here)."""
    refs = list(itertools.islice(file_listing.list_files(str(pattern)), 1000))
    assert len(refs) < 1000, "the listing did not end"
    paths = [ref.path for ref in refs]
    assert len(paths) == len(set(paths)), "a path listed twice"
    return {ref.path: ref.problem for ref in refs}


def test_a_folder_is_listed_recursively_with_absolute_paths_and_sizes(tmp_path, monkeypatch):
    files = [_touch(tmp_path / "a" / "1.jpg", b"12345"), _touch(tmp_path / "a" / "b" / "c" / "2.png"),
             _touch(tmp_path / "a" / ".hidden.jpg")]
    (tmp_path / "a" / "empty").mkdir()
    monkeypatch.chdir(tmp_path)

    refs = {ref.path: ref for ref in file_listing.list_files("a")}  # relative, without a trailing slash

    assert set(refs) == set(files)
    assert refs[files[0]].size == 5 and refs[files[0]].problem is None
    assert refs[files[0]].version == os.stat(files[0]).st_mtime_ns
    assert set(_listed("a/")) == set(files) and set(_listed(files[0])) == {files[0]}
    assert _listed(tmp_path / "missing") == {}  # a typo lists nothing (not the folder it would be in)
    assert file_listing.first_unmatched([files[0], str(tmp_path / "a" / "missing")]) == str(tmp_path / "a" / "missing")


def test_globs_match_within_a_folder_across_folders_and_on_part_of_a_name(tmp_path):
    cat1, cat2 = _touch(tmp_path / "cat_1.jpg"), _touch(tmp_path / "cat_2.png")
    dog = _touch(tmp_path / "dog_1.jpg")
    deep = _touch(tmp_path / "sub" / "deeper" / "cat_3.jpg")

    assert set(_listed(tmp_path / "*.jpg")) == {cat1, dog}  # `*` stays within its folder
    assert set(_listed(tmp_path / "**.jpg")) == {cat1, dog, deep}  # `**` crosses folders
    assert set(_listed(tmp_path / "cat_*")) == {cat1, cat2}  # the wildcard inside a name
    assert set(_listed(tmp_path / "cat_?.*")) == {cat1, cat2}
    assert set(_listed(tmp_path / "[cd]*_1.jpg")) == {cat1, dog}
    assert set(_listed(tmp_path / "*" / "*" / "*.jpg")) == {deep}
    assert file_listing.first_unmatched([str(tmp_path / "*.jpg"), str(tmp_path / "*.gif")]) == str(tmp_path / "*.gif")
    assert file_listing.first_unmatched([str(tmp_path / "*.jpg")]) is None


def test_a_symlinked_folder_is_walked_once_and_a_loop_or_a_second_link_is_reported(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    inside = _touch(root / "a" / "1.jpg")
    kept = _touch(elsewhere / "2.jpg")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "a" / "up").symlink_to(root, target_is_directory=True)  # back to the top: a loop
    (root / "a" / "self").symlink_to(root / "a", target_is_directory=True)  # to its own folder
    (root / "again").symlink_to(elsewhere, target_is_directory=True)  # the followed folder a second time

    listed = _listed(root)

    followed = "linked" if str(root / "linked" / "2.jpg") in listed else "again"
    other = "again" if followed == "linked" else "linked"
    assert listed == {inside: None, str(root / followed / "2.jpg"): None,
                      str(root / "a" / "up"): file_listing.SYMLINK_LOOP,
                      str(root / "a" / "self"): file_listing.SYMLINK_LOOP,
                      str(root / other): file_listing.SYMLINK_LOOP}
    assert kept not in listed  # under the path given, not where the link points


def test_broken_links_fifos_and_links_to_files_are_listed_with_their_problem(tmp_path):
    good = _touch(tmp_path / "good.jpg")
    (tmp_path / "broken.jpg").symlink_to(tmp_path / "never-was.jpg")
    (tmp_path / "itself.jpg").symlink_to(tmp_path / "itself.jpg")  # a link to itself (ELOOP)
    (tmp_path / "alias.jpg").symlink_to(good)
    os.mkfifo(tmp_path / "pipe.jpg")

    assert _listed(tmp_path) == {good: None, str(tmp_path / "alias.jpg"): None,
                                 str(tmp_path / "broken.jpg"): file_listing.BROKEN_SYMLINK,
                                 str(tmp_path / "itself.jpg"): file_listing.BROKEN_SYMLINK,
                                 str(tmp_path / "pipe.jpg"): file_listing.NOT_A_FILE}
    # named alone
    assert _listed(tmp_path / "broken.jpg") == {str(tmp_path / "broken.jpg"): file_listing.BROKEN_SYMLINK}
    assert _listed(tmp_path / "pipe.jpg") == {str(tmp_path / "pipe.jpg"): file_listing.NOT_A_FILE}


# Lists a tree as an unprivileged user (the tests run as root, whom permissions do not stop). Everything is imported
# before dropping privileges: the interpreter's own files may be out of that user's reach.
AS_NOBODY = textwrap.dedent("""
    import json, os, sys
    from beam_pipelines import file_listing
    os.setgid(65534)
    os.setuid(65534)
    print(json.dumps({ref.path: ref.problem for ref in file_listing.list_files(sys.argv[1])}))
""")


def test_folders_that_cannot_be_read_or_searched_are_reported_and_the_rest_is_listed():
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user")
    top = Path(tempfile.mkdtemp(prefix="catsdogs-listing-"))  # not under pytest's folders, which are private to root
    os.chmod(top, 0o755)
    readable = _touch(top / "open" / "1.jpg")
    _touch(top / "closed" / "2.jpg")
    _touch(top / "no_search" / "3.jpg")  # names can be read, but not looked up (chmod -R 644 on a tree)
    os.chmod(top / "closed", 0o000)
    os.chmod(top / "no_search", 0o644)
    try:
        listed = json.loads(run_python(AS_NOBODY, top, timeout=60).stdout)
    finally:
        shutil.rmtree(top)
    assert listed == {readable: None, str(top / "closed"): file_listing.UNREADABLE_FOLDER,
                      str(top / "no_search"): file_listing.UNREADABLE_FOLDER}


def test_names_that_are_not_utf8_are_listed_and_shown_as_valid_utf8(tmp_path):
    folder = os.fsencode(tmp_path)
    for raw in (b"caf\xe9.jpg", b"\xff\xfe.png", b"ok-\xc3\xa9.jpg"):  # Latin-1, garbage, valid UTF-8 (é)
        with open(os.path.join(folder, raw), "wb") as handle:
            handle.write(raw)

    refs = {os.fsencode(ref.path): ref for ref in file_listing.list_files(str(tmp_path))}

    assert set(refs) == {os.path.join(folder, raw) for raw in (b"caf\xe9.jpg", b"\xff\xfe.png", b"ok-\xc3\xa9.jpg")}
    shown = {raw.rsplit(b"/", 1)[1]: storage.display_path(ref.path) for raw, ref in refs.items()}
    assert shown[b"caf\xe9.jpg"] == f"{tmp_path}/caf\\xe9.jpg"
    assert shown[b"\xff\xfe.png"] == f"{tmp_path}/\\xff\\xfe.png"
    assert shown[b"ok-\xc3\xa9.jpg"] == f"{tmp_path}/ok-é.jpg"  # valid names are shown as they are
    for text in shown.values():
        text.encode("utf-8")  # valid UTF-8 output
    for raw, ref in refs.items():
        assert storage.read_bytes(ref.path) == raw.rsplit(b"/", 1)[1]  # and readable under the name Python holds
    assert len({storage.path_key(ref.path) for ref in refs.values()}) == 3


def _upload(bucket_uri: str, names) -> None:
    from google.cloud import storage as gcs

    bucket = gcs.Client().bucket(bucket_uri[len("gs://"):])
    for name in names:
        bucket.blob(name).upload_from_string(name.encode() * 10)


def test_gcs_listing_follows_pages_and_returns_every_object_once(fake_gcs_bucket, fake_gcs_server, monkeypatch):
    names = [f"images/{kind}/{i}.jpg" for kind in ("cat", "dog") for i in range(7)] + ["images/notes.txt"]
    _upload(fake_gcs_bucket, names + ["other/1.jpg"])
    monkeypatch.setattr(file_listing, "LIST_PAGE_SIZE", 4)
    with FaultyProxy(fake_gcs_server, faults=lambda request: None) as proxy:
        point_gcs_at(monkeypatch, proxy.url)
        refs = list(file_listing.list_files(f"{fake_gcs_bucket}/images"))  # a folder given without its '/'
    point_gcs_at(monkeypatch, fake_gcs_server)

    assert sorted(ref.path for ref in refs) == sorted(f"{fake_gcs_bucket}/{name}" for name in names)
    assert len(proxy.requests("list")) == 4  # 15 objects, 4 a page
    assert all(ref.size == len(ref.path.split("/", 3)[3]) * 10 and ref.version and ref.mtime for ref in refs)


def test_gcs_globs_single_objects_and_vanished_objects(gcs_bucket, gcs_emulator_host, monkeypatch):
    _upload(gcs_bucket, ["img/cat_1.jpg", "img/cat_2.png", "img/dog_1.jpg", "img/sub/cat_3.jpg", "img/folder/"])
    uri = f"{gcs_bucket}/img"

    def paths(pattern):
        return sorted(ref.path[len(uri) + 1:] for ref in file_listing.list_files(pattern))

    assert paths(f"{uri}/") == ["cat_1.jpg", "cat_2.png", "dog_1.jpg", "sub/cat_3.jpg"]  # no folder placeholder
    assert paths(f"{uri}/*.jpg") == ["cat_1.jpg", "dog_1.jpg"]
    assert paths(f"{uri}/**.jpg") == ["cat_1.jpg", "dog_1.jpg", "sub/cat_3.jpg"]
    assert paths(f"{uri}/cat_*") == ["cat_1.jpg", "cat_2.png"]  # the wildcard inside a name
    assert paths(f"{uri}/cat_1.jpg") == ["cat_1.jpg"]
    assert storage.read_bytes(f"{uri}/cat_1.jpg", limit=1000) == b"img/cat_1.jpg" * 10
    with pytest.raises(storage.FileTooLarge):
        storage.read_bytes(f"{uri}/cat_1.jpg", limit=100)
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"{uri}/never.jpg")


