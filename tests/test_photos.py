"""Photo formats as libraries hold them: HEIC, AVIF and camera RAW (DNG), rotated by their metadata,
corrupt, beside a same-named JPEG, and without the optional extra installed (issue 16)."""

import numpy as np
import pytest
from PIL import Image

import mlx_aimv2
from mlx_aimv2 import formats
from mlx_aimv2.errors import UserError
from mlx_aimv2.paths import expand_paths
from mlx_aimv2.preprocess import load_image

ORIENTATION = 0x0112


def _halves(h=96, w=144) -> np.ndarray:
    """Red left half, blue right half, a green stripe on top: any rotation or mirror shows."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2, 0] = 230
    a[:, w // 2 :, 2] = 230
    a[: h // 6, :, 1] = 230
    return a


def _exif(orientation: int) -> bytes:
    e = Image.Exif()
    e[ORIENTATION] = orientation
    return e.tobytes()


def _dng(path, rgb: np.ndarray, orientation: int = 1):
    """A linear (demosaiced) DNG: TIFF with DNGVersion; LibRaw reads it as a camera file."""
    from PIL import TiffImagePlugin

    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[50706] = b"\x01\x04\x00\x00"  # DNGVersion 1.4
    info.tagtype[50706] = 1
    info[50708] = "mlx-aimv2 test camera"  # UniqueCameraModel
    info[274] = orientation
    info[262] = 34892  # PhotometricInterpretation: LinearRaw
    Image.fromarray(rgb).save(path, format="TIFF", tiffinfo=info)


def _upright(a: np.ndarray) -> np.ndarray:
    """What a viewer shows for EXIF orientation 6 (rotate 90 degrees clockwise)."""
    return np.rot90(a, k=-1)


def _close(img: Image.Image, ref: np.ndarray, tol=40) -> bool:
    got = np.asarray(img.convert("RGB")).astype(int)
    return got.shape == ref.shape and np.abs(got - ref).mean() < tol


@pytest.mark.parametrize("ext", [".jpg", ".heic", ".avif", ".dng"])
def test_rotated_photo_in_every_format_decodes_upright(tmp_path, ext):
    if ext == ".heic":
        pytest.importorskip("pillow_heif", reason="HEIC needs the heif extra")
    if ext == ".dng":
        pytest.importorskip("rawpy", reason="RAW needs the raw extra")
    if ext == ".avif" and formats.needs(".avif"):
        pytest.skip("AVIF needs Pillow >= 11.3 or the heif extra")
    a = _halves()
    f = tmp_path / f"rotated{ext}"
    if ext == ".dng":
        _dng(f, a, orientation=6)
    else:
        formats.needs(ext)  # registers pillow-heif's opener for the save
        Image.fromarray(a).save(f, exif=_exif(6), quality=95)
    img = load_image(f)
    assert _close(img, _upright(a)), f"{ext} not upright: {img.size}"


def test_raw_beside_its_jpeg_is_indexed_once(tmp_path):
    a = _halves()
    Image.fromarray(a).save(tmp_path / "IMG_0001.JPG")
    _dng(tmp_path / "IMG_0001.dng", a)
    _dng(tmp_path / "IMG_0002.dng", a)  # RAW only: kept
    files, _ = expand_paths([str(tmp_path)])
    assert sorted(p.name for p in files) == ["IMG_0001.JPG", "IMG_0002.dng"]


def test_corrupt_heic_and_raw_are_one_clear_line(tmp_path):
    for ext in (".heic", ".dng", ".avif"):
        f = tmp_path / f"broken{ext}"
        f.write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(range(200)))
        with pytest.raises(UserError) as e:
            load_image(f)
        msg = str(e.value)
        assert str(f) in msg and "\n" not in msg
        assert "cannot decode" in msg or "pip install" in msg


def test_without_the_extra_the_file_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "pillow_heif", None)
    monkeypatch.setattr(formats, "rawpy", None)
    monkeypatch.setattr(formats, "_HEIF", {})
    (tmp_path / "a.heic").write_bytes(b"not decoded")
    (tmp_path / "b.dng").write_bytes(b"not decoded")
    with pytest.raises(
        UserError, match=r"a\.heic: HEIC files need an optional package: pip install 'mlx-aimv2\[heif\]'"
    ):
        load_image(tmp_path / "a.heic")
    with pytest.raises(UserError, match=r"pip install 'mlx-aimv2\[raw\]'"):
        load_image(tmp_path / "b.dng")
    files, _ = expand_paths([str(tmp_path)])  # still listed, so the run can say what to install
    assert sorted(p.name for p in files) == ["a.heic", "b.dng"]


def test_a_mixed_folder_is_indexed_and_searched(tmp_path):
    pytest.importorskip("pillow_heif", reason="HEIC needs the heif extra")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    base = [rng.integers(0, 255, (80, 120, 3), dtype=np.uint8) for _ in range(3)]
    formats.needs(".heic")
    Image.fromarray(base[0]).save(photos / "one.jpg", quality=95)
    Image.fromarray(base[1]).save(photos / "two.heic", quality=95)
    Image.fromarray(base[2]).save(photos / "three.png")
    (photos / "broken.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(100))
    with mlx_aimv2.Index(tmp_path / "lib.aimv2", model="demo-lit") as lib:
        s = lib.add([photos])
        assert (s.new, len(s.bad)) == (3, 1) and "broken.heic" in s.bad[0][0]
        hits = lib.search(image=photos / "two.heic", k=1)
        assert hits[0].path.endswith("two.heic") and hits[0].score > 0.999
