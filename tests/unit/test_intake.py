import io
import os

import pytest

from pipeline.intake import IntakeError, Limits, clean_relative_path, iter_folder, iter_zip, resolve_allowed_folder
from tests.conftest import jpeg_bytes, make_zip

LIMITS = Limits(max_total_bytes=10_000_000, max_file_bytes=1_000_000, max_files=100)


@pytest.mark.parametrize(("raw", "clean"), [("a/b.jpg", "a/b.jpg"), ("./a//b.jpg", "a/b.jpg"), ("a\\b.jpg", "a/b.jpg")])
def test_clean_relative_path(raw, clean):
    assert clean_relative_path(raw) == clean


@pytest.mark.parametrize("raw", ["../x.jpg", "a/../../x.jpg", "/etc/passwd", "C:/x.jpg", "", "."])
def test_unsafe_names_are_refused(raw):
    with pytest.raises(IntakeError):
        clean_relative_path(raw)


def test_zip_yields_images_with_relative_paths_and_skips_mac_junk():
    data = make_zip({"slide1/a.jpg": jpeg_bytes(1), "slide2/b.jpg": jpeg_bytes(2), "__MACOSX/._a.jpg": b"x", ".DS_Store": b"x"})
    items = list(iter_zip(io.BytesIO(data), LIMITS))
    assert [p for p, _ in items] == ["slide1/a.jpg", "slide2/b.jpg"]
    assert items[0][1] == jpeg_bytes(1)


@pytest.mark.parametrize(
    ("members", "links", "message"),
    [
        ({"../evil.jpg": b"x"}, None, "escapes"),
        ({"/abs/evil.jpg": b"x"}, None, "absolute"),
        ({"ok.jpg": b"x"}, {"link.jpg": "/etc/passwd"}, "symlink"),
    ],
)
def test_unsafe_zip_is_refused_whole(members, links, message):
    with pytest.raises(IntakeError, match=message):
        list(iter_zip(io.BytesIO(make_zip(members, links)), LIMITS))


def test_zip_bomb_is_refused_from_the_directory():
    data = make_zip({"big.jpg": b"\x00" * 2_000_000})
    with pytest.raises(IntakeError, match="per-image limit"):
        list(iter_zip(io.BytesIO(data), LIMITS))
    small = Limits(max_total_bytes=1000, max_file_bytes=1_000_000, max_files=100)
    with pytest.raises(IntakeError, match="expands to"):
        list(iter_zip(io.BytesIO(make_zip({"a.jpg": b"\x00" * 2000})), small))


def test_not_a_zip():
    with pytest.raises(IntakeError, match="not a valid zip"):
        list(iter_zip(io.BytesIO(b"plain text"), LIMITS))


def test_folder_must_be_under_allowed_root(tmp_path):
    root = tmp_path / "root"
    (root / "slides" / "s1").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    assert resolve_allowed_folder("slides", str(root)) == (root / "slides").resolve()
    with pytest.raises(IntakeError, match="outside"):
        resolve_allowed_folder(str(tmp_path / "outside"), str(root))
    with pytest.raises(IntakeError, match="outside"):
        resolve_allowed_folder("slides/../../outside", str(root))
    with pytest.raises(IntakeError, match="disabled"):
        resolve_allowed_folder("slides", "")
    with pytest.raises(IntakeError, match="does not exist"):
        resolve_allowed_folder("nope", str(root))


def test_folder_walk_skips_symlinks_leaving_it(tmp_path):
    root = tmp_path / "root"
    (root / "s1").mkdir(parents=True)
    (root / "s1" / "a.jpg").write_bytes(jpeg_bytes())
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"secret")
    os.symlink(secret, root / "s1" / "leak.jpg")
    assert [p for p, _ in iter_folder(root, LIMITS)] == ["s1/a.jpg"]
