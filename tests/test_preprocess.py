"""Our preprocessing against transformers' PIL-backend CLIPImageProcessor, on a real photo and odd modes."""

import numpy as np
import pytest
from helpers import PHOTO
from PIL import Image

from mlx_aimv2.errors import UserError
from mlx_aimv2.preprocess import Preprocessor, load_image


def _reference(img, size=224):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return proc(images=img, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)


def _variants():
    photo = Image.open(PHOTO)
    photo.load()
    wide = photo.crop((0, 100, 512, 400))
    rgba = wide.convert("RGBA")
    a = np.array(rgba)
    a[..., 3] = np.linspace(0, 255, a.shape[1]).astype(np.uint8)[None]
    return {
        "photo": photo,
        "wide": wide,
        "tall": photo.crop((50, 0, 250, 600)),
        "L": photo.convert("L"),
        "LA": Image.fromarray(a).convert("LA"),
        "P": wide.convert("P"),
        "RGBA": Image.fromarray(a),
        "CMYK": wide.convert("CMYK"),
        "small": photo.resize((100, 90)),
    }


@pytest.mark.parametrize("name", list(_variants()))
def test_matches_clip_image_processor(name):
    img = _variants()[name]
    ours = Preprocessor()(img)
    ref = _reference(img)
    assert ours.shape == ref.shape == (224, 224, 3)
    assert np.abs(ours - ref).max() <= 1e-5


def test_16_bit_images_equal_their_8_bit_copy(tmp_path):
    """A 16-bit PNG (PIL mode I;16) and a uint16 array scale to 8 bits; transformers' PIL path clips
    them to white (issue 17), so the reference is its output for the 8-bit copy."""
    grey = Image.open(PHOTO).convert("L")
    wide = np.array(grey).astype(np.uint16) * 257  # the 8-bit values spread over 16 bits exactly
    png = tmp_path / "grey16.png"
    Image.fromarray(wide).save(png)
    assert Image.open(png).mode.startswith("I")
    ref = _reference(grey)
    assert np.abs(Preprocessor()(png) - ref).max() <= 1e-5
    assert np.abs(Preprocessor()(wide) - ref).max() <= 1e-5
    assert np.abs(Preprocessor()(wide.astype(np.float32) / 65535) - ref).max() <= 0.02  # float in [0, 1]


def test_other_resolution_from_config():
    img = _variants()["wide"]
    cfg = {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}
    assert np.abs(Preprocessor.from_config(cfg)(img) - _reference(img, 336)).max() <= 1e-5


def test_exif_orientation_is_applied(tmp_path):
    photo = _variants()["wide"]  # 512 x 300
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    f = tmp_path / "rot.jpg"
    photo.save(f, exif=exif)
    img = load_image(f)
    assert img.size == (300, 512)
    from PIL import ImageOps

    ref = _reference(ImageOps.exif_transpose(Image.open(f)))
    assert np.abs(Preprocessor()(f) - ref).max() <= 1e-5


def test_native_sizing_keeps_aspect_within_budget():
    p = Preprocessor(native_patch=14)
    for w, h in [(640, 480), (4000, 3000), (50, 60), (1000, 140), (224, 336)]:
        nw, nh = p.native_size(w, h)
        assert nw % 14 == 0 and nh % 14 == 0
        assert 112 <= (nw // 14) * (nh // 14) <= 4096
        assert abs(np.log((nw / nh) / (w / h))) < 0.25  # aspect kept up to rounding
    assert p.native_size(224, 336) == (224, 336)
    assert Preprocessor(native_patch=14)(Image.new("RGB", (640, 480))).shape == (
        476,
        644,
        3,
    )  # round(480/14)=34, round(640/14)=46 patches


@pytest.mark.parametrize("content, what", [(b"", "empty"), (b"not an image at all", "cannot decode")])
def test_bad_files_raise_one_clear_error(tmp_path, content, what):
    f = tmp_path / "bad.jpg"
    f.write_bytes(content)
    with pytest.raises(UserError, match=what):
        load_image(f)


def test_truncated_and_bomb_images(tmp_path, monkeypatch):
    data = PHOTO.read_bytes()
    f = tmp_path / "trunc.jpg"
    f.write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError, match="trunc.jpg"):
        load_image(f)
    import mlx_aimv2.formats as formats

    monkeypatch.setattr(formats, "MAX_PIXELS", 1000)
    with pytest.raises(UserError, match="pixel limit"):
        load_image(PHOTO)
    with pytest.raises(UserError, match="no such"):
        load_image(tmp_path / "missing.png")
