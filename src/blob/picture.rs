//! The image pipeline of an upload: sniff the type from the bytes (the declared content type
//! is not trusted), read the dimensions and refuse too many pixels before decoding, decode
//! under allocation limits, then re-encode (which drops EXIF/GPS and anything smuggled after
//! or inside the image) and cut a square thumbnail.

use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use std::io::Cursor;
use thiserror::Error;

/// Why an upload is not an acceptable image.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PictureError {
    /// The bytes start like none of JPEG, PNG, WebP or GIF.
    #[error("not a JPEG, PNG, WebP or GIF image")]
    UnsupportedType,
    /// The header claims more pixels than allowed (a decompression bomb, or just too big).
    #[error("image too large: {width}x{height} pixels exceeds the limit of {max_pixels}")]
    TooManyPixels {
        /// Claimed width.
        width: u32,
        /// Claimed height.
        height: u32,
        /// The configured limit.
        max_pixels: u64,
    },
    /// The bytes are truncated or malformed for their type.
    #[error("the image could not be decoded")]
    Corrupt,
}

/// Bounds of the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct PictureLimits {
    /// Most pixels (width × height) accepted.
    pub max_pixels: u64,
    /// Longest side of the stored image.
    pub max_side: u32,
    /// Side of the square thumbnail.
    pub thumbnail_side: u32,
}

/// A cleaned image and its thumbnail, both JPEG.
#[derive(Debug)]
pub struct Processed {
    /// The re-encoded image, scaled to fit `max_side`.
    pub image: Vec<u8>,
    /// The square thumbnail.
    pub thumbnail: Vec<u8>,
}

/// The content type of everything [`process`] produces.
pub const OUTPUT_CONTENT_TYPE: &str = "image/jpeg";
/// The file extension of everything [`process`] produces.
pub const OUTPUT_EXTENSION: &str = "jpg";

/// The format the magic bytes announce, if it is one we accept.
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some(ImageFormat::Gif)
    } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
        Some(ImageFormat::WebP)
    } else {
        None
    }
}

/// Runs the whole pipeline; CPU-bound, so callers run it off the async executor.
pub fn process(bytes: &[u8], limits: PictureLimits) -> Result<Processed, PictureError> {
    let format = sniff(bytes).ok_or(PictureError::UnsupportedType)?;
    let reader = |max_alloc: Option<u64>| {
        let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
        let mut l = Limits::default();
        l.max_alloc = max_alloc;
        reader.limits(l);
        reader
    };
    // Dimensions come from the header alone; a bomb is refused before any pixel buffer.
    let (width, height) = reader(Some(64 * 1024 * 1024))
        .into_dimensions()
        .map_err(|_| PictureError::Corrupt)?;
    if u64::from(width) * u64::from(height) > limits.max_pixels || width == 0 || height == 0 {
        return Err(PictureError::TooManyPixels {
            width,
            height,
            max_pixels: limits.max_pixels,
        });
    }
    // RGBA at 4 bytes a pixel plus decoder scratch space; anything beyond is refused.
    let budget = limits
        .max_pixels
        .saturating_mul(4)
        .saturating_add(16 * 1024 * 1024);
    let decoded = reader(Some(budget))
        .decode()
        .map_err(|_| PictureError::Corrupt)?;
    let full = if decoded.width() > limits.max_side || decoded.height() > limits.max_side {
        decoded.resize(
            limits.max_side,
            limits.max_side,
            image::imageops::FilterType::Triangle,
        )
    } else {
        decoded
    };
    let side = limits.thumbnail_side;
    let thumb = full.resize_to_fill(side, side, image::imageops::FilterType::Triangle);
    Ok(Processed {
        image: encode(&full)?,
        thumbnail: encode(&thumb)?,
    })
}

/// Encodes as baseline JPEG from the bare pixels, so no metadata of the original survives.
fn encode(img: &DynamicImage) -> Result<Vec<u8>, PictureError> {
    let rgb = DynamicImage::ImageRgb8(img.to_rgb8());
    let mut out = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85);
    rgb.write_with_encoder(encoder)
        .map_err(|_| PictureError::Corrupt)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PictureLimits = PictureLimits {
        max_pixels: 1_000_000,
        max_side: 64,
        thumbnail_side: 16,
    };

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img =
            DynamicImage::ImageRgb8(image::RgbImage::from_pixel(w, h, image::Rgb([200, 10, 10])));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).expect("encode");
        out.into_inner()
    }

    #[test]
    fn sniffs_by_magic_bytes() {
        assert_eq!(sniff(&png(2, 2)), Some(ImageFormat::Png));
        assert_eq!(sniff(b"GIF89a...."), Some(ImageFormat::Gif));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(ImageFormat::WebP));
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some(ImageFormat::Jpeg));
        assert_eq!(sniff(b"<html>"), None);
    }

    #[test]
    fn re_encodes_scales_and_thumbnails() {
        let out = process(&png(200, 100), LIMITS).expect("processed");
        let full = image::load_from_memory(&out.image).expect("jpeg");
        assert_eq!((full.width(), full.height()), (64, 32));
        let thumb = image::load_from_memory(&out.thumbnail).expect("jpeg");
        assert_eq!((thumb.width(), thumb.height()), (16, 16));
        assert_eq!(sniff(&out.image), Some(ImageFormat::Jpeg));
    }

    #[test]
    fn refuses_garbage_truncation_and_bombs() {
        assert_eq!(
            process(b"hello", LIMITS).unwrap_err(),
            PictureError::UnsupportedType
        );
        let p = png(50, 50);
        assert_eq!(
            process(&p[..p.len() / 2], LIMITS).unwrap_err(),
            PictureError::Corrupt
        );
        let big = png(1001, 1000);
        assert!(matches!(
            process(&big, LIMITS).unwrap_err(),
            PictureError::TooManyPixels { .. }
        ));
    }
}
