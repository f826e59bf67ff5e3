//! The album's HTML contact sheet (`index.html` of `facekit cluster`): per person, face crops
//! titled with their file and face index and linking to the photo; the unknown faces; the
//! photos without faces. Self-contained: thumbnails are embedded as base64 JPEG.

use std::io::Cursor;
use std::path::Path;

use rayon::prelude::*;

use super::AlbumRun;
use crate::detect::BBox;
use crate::io::{self, LoadOptions};

/// A path as shown to people (lossy UTF-8).
fn shown(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Faces shown per person on the contact sheet.
pub const SHEET_FACES: usize = 24;

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A section of the sheet: its title, the faces shown (indices into [`super::Album::faces`])
/// and how many faces it has in all.
type Section = (String, Vec<usize>, usize);

/// One section per person (up to [`SHEET_FACES`] faces each), then the unknown faces.
fn sections(album: &super::Album) -> Vec<Section> {
    let mut sections: Vec<Section> = album
        .people
        .iter()
        .map(|p| {
            let title = if p.folder == p.label {
                p.label.clone()
            } else {
                format!("{} ({})", p.label, p.folder)
            };
            (
                title,
                p.faces.iter().copied().take(SHEET_FACES).collect(),
                p.faces.len(),
            )
        })
        .collect();
    let unknown: Vec<usize> = (0..album.faces.len())
        .filter(|&f| album.faces[f].person.is_none())
        .collect();
    if !unknown.is_empty() {
        sections.push((
            "unknown".into(),
            unknown.iter().copied().take(SHEET_FACES).collect(),
            unknown.len(),
        ));
    }
    sections
}

/// The thumbnails of the faces the sections show, by face index, grouped by photo so each
/// photo is decoded once and only the faces shown are cut out (data-parallel).
fn thumbnails(
    run: &AlbumRun,
    sections: &[Section],
    opts: &LoadOptions,
) -> std::collections::HashMap<usize, String> {
    let album = &run.album;
    let mut needed: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for &f in sections.iter().flat_map(|s| s.1.iter()) {
        needed.entry(album.faces[f].photo).or_default().push(f);
    }
    let needed: Vec<(usize, Vec<usize>)> = needed.into_iter().collect();
    needed
        .par_iter()
        .flat_map_iter(|(i, faces)| {
            let img = io::load_image(&run.inputs[*i], opts).ok();
            faces
                .iter()
                .filter_map(|&f| {
                    let b = run.photos[*i]
                        .as_ref()?
                        .faces
                        .get(album.faces[f].index)?
                        .bbox;
                    thumbnail(img.as_ref()?, &b).map(|t| (f, t))
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A 96 px JPEG thumbnail of the face box (with some margin), base64.
fn thumbnail(img: &image::RgbImage, b: &BBox) -> Option<String> {
    let (w, h) = (b.width(), b.height());
    let side = w.max(h) * 1.3;
    let (cx, cy) = (b.center().x, b.center().y);
    let x0 = (cx - side / 2.0).max(0.0) as u32;
    let y0 = (cy - side / 2.0).max(0.0) as u32;
    let x1 = ((cx + side / 2.0) as u32).min(img.width());
    let y1 = ((cy + side / 2.0) as u32).min(img.height());
    if x1 <= x0 || y1 <= y0 {
        return None;
    }
    let crop = image::imageops::crop_imm(img, x0, y0, x1 - x0, y1 - y0).to_image();
    let thumb = image::imageops::resize(&crop, 96, 96, image::imageops::FilterType::Triangle);
    let mut bytes = Vec::new();
    thumb
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
        .ok()?;
    Some(io::base64(&bytes))
}

/// `index.html`: per person, up to [`SHEET_FACES`] face crops (each titled with its file and
/// face index, linking to the photo), the unknown faces, and the photos without faces.
/// Runs data-parallel in the current rayon pool (each photo shown is decoded once).
pub fn contact_sheet(run: &AlbumRun, opts: &LoadOptions) -> String {
    let (inputs, album) = (&run.inputs, &run.album);
    let sections = sections(&run.album);
    let thumbs = thumbnails(run, &sections, opts);
    let href = |p: &Path| {
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        html_escape(&format!("file://{}", abs.to_string_lossy()))
    };
    let mut html = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>facekit cluster</title>\n\
         <style>body{font-family:sans-serif;margin:1em}h2{font-size:1em;margin:1em 0 .3em}\
         img{width:96px;height:96px;margin:1px;border-radius:3px}li{font-size:.9em}</style>\
         </head><body>\n<h1>facekit cluster</h1>\n",
    );
    for (name, faces, total) in &sections {
        html.push_str(&format!(
            "<h2>{} &mdash; {} face(s){}</h2>\n<div>",
            html_escape(name),
            total,
            if *total > faces.len() {
                format!(", first {}", faces.len())
            } else {
                String::new()
            }
        ));
        for &f in faces {
            if let Some(t) = thumbs.get(&f) {
                let face = &album.faces[f];
                let title = html_escape(&format!(
                    "{} face {}",
                    shown(&inputs[face.photo]),
                    face.index
                ));
                html.push_str(&format!(
                    "<a href=\"{}\"><img src=\"data:image/jpeg;base64,{t}\" title=\"{title}\" \
                     alt=\"{title}\"></a>",
                    href(&inputs[face.photo])
                ));
            }
        }
        html.push_str("</div>\n");
    }
    if !run.no_faces.is_empty() {
        html.push_str(&format!(
            "<h2>no faces &mdash; {} photo(s)</h2>\n<ul>",
            run.no_faces.len()
        ));
        for p in run.no_faces.iter().map(|&i| &inputs[i]) {
            html.push_str(&format!(
                "<li><a href=\"{}\">{}</a></li>",
                href(p),
                html_escape(&shown(p))
            ));
        }
        html.push_str("</ul>\n");
    }
    html.push_str("</body></html>\n");
    html
}
