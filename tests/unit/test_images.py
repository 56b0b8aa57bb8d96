import cv2
import numpy as np
import pytest

from pipeline.images import ImageRejected, decode_image, sniff_format
from tests.conftest import jpeg_bytes, png_header_only

LIMIT = 40_000_000


def test_decodes_a_real_jpeg():
    img = decode_image(jpeg_bytes(), LIMIT)
    assert img.shape == (240, 320, 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"hello, this is a text file\n" * 10, "not a recognised image"),
        (png_header_only(100_000, 100_000), "over the limit"),
        (png_header_only(4, 4), "too small"),
    ],
)
def test_rejected_from_the_header(data, message):
    with pytest.raises(ImageRejected, match=message):
        sniff_format(data, LIMIT)


def test_bomb_is_refused_before_decoding(monkeypatch):
    def boom(*_a, **_k):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(cv2, "imdecode", boom)
    with pytest.raises(ImageRejected, match="over the limit"):
        decode_image(png_header_only(30_000, 30_000), LIMIT)


def test_truncated_jpeg_is_refused():
    data = jpeg_bytes()
    with pytest.raises(ImageRejected, match="truncated"):
        decode_image(data[: len(data) // 2], LIMIT)


def test_corrupt_jpeg_body_is_refused():
    """Decided: a JPEG whose entropy-coded body is destroyed (header intact, end marker present) is refused, not
    classified as a flat image; the decoder's failure is the signal."""
    data = bytearray(jpeg_bytes())
    header_end = 600
    data[header_end:-2] = b"\x00" * (len(data) - header_end - 2)
    assert bytes(data[-2:]) == b"\xff\xd9"  # not caught by the truncation check
    with pytest.raises(ImageRejected, match="corrupt image data"):
        decode_image(bytes(data), LIMIT)


def test_png_is_accepted():
    ok, buf = cv2.imencode(".png", np.full((40, 50, 3), 128, np.uint8))
    assert ok
    assert decode_image(buf.tobytes(), LIMIT).shape == (40, 50, 3)
