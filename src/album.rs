//! Clustering an album into people, incrementally, on the face library: faces that already
//! belong to someone keep their person; new faces join the nearest known person (enrolled,
//! confirmed or clustered earlier) when one is close enough, and the rest are clustered among
//! themselves into new people. Person ids are the library's, so they are stable across runs,
//! and named people give their folders their names.
//!
//! [`run`] is the whole workflow `facekit cluster` runs: the photos under the album's paths, their
//! faces (from the library, or detected and embedded once), who is who, and which folders each
//! photo belongs in; [`AlbumRun::place`] puts them there with an [`Organizer`] and
//! [`sheet::contact_sheet`] draws the HTML contact sheet. The organising of files (copy, link,
//! move, undo) is [`crate::organize`]'s; this module only decides who is who and where.

pub mod sheet;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cluster::{self, ClusterConfig};
use crate::detect::BBox;
use crate::distance;
use crate::library::people::{folder_name, label};
use crate::library::{FaceId, ImageFaces, Library, Source};
use crate::organize::Organizer;
use crate::pipeline::Pipeline;
use crate::progress::Progress;
use crate::{Error, Result};

/// Settings of an album run.
#[derive(Debug, Clone, Default)]
pub struct AlbumConfig {
    /// How new faces are grouped, the linking threshold (also the distance under which a new
    /// face joins a known person), the minimum group size and face width.
    pub cluster: ClusterConfig,
    /// Forget earlier clustering of this album's faces first (enrolled and confirmed faces
    /// stay; they seed the new clusters).
    pub recluster: bool,
    /// How photos are decoded ([`run`] only).
    pub load: crate::io::LoadOptions,
    /// Folders whose files are not part of the album, e.g. the output folder when it lies
    /// inside the album ([`run`] only).
    pub exclude: Vec<PathBuf>,
}

/// One face of the album and who it is.
#[derive(Debug, Clone, PartialEq)]
pub struct AlbumFace {
    /// Index of its photo in the input list.
    pub photo: usize,
    /// Index of the face within its photo (0 = the detector's best).
    pub index: usize,
    /// Its id in the library.
    pub id: FaceId,
    /// Its box.
    pub bbox: BBox,
    /// The person it belongs to, if any.
    pub person: Option<i64>,
    /// How it came to belong to them.
    pub source: Option<Source>,
    /// True when this run made the assignment (a new face, or any face under `recluster`).
    pub assigned_now: bool,
}

/// A person with faces in the album.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AlbumPerson {
    /// The library's person id (stable across runs).
    pub id: i64,
    /// The name, once given (`facekit people rename`).
    pub name: Option<String>,
    /// The name or `person_0007`.
    pub label: String,
    /// The folder name under OUT (the label made safe; unique within the run).
    pub folder: String,
    /// Indices into [`Album::faces`], in album order.
    #[serde(skip)]
    pub faces: Vec<usize>,
    /// Distinct photos.
    pub photos: usize,
    /// Faces assigned by this run.
    pub new_faces: usize,
    /// The face (index into [`Album::faces`]) nearest the person's mean in this album.
    #[serde(skip)]
    pub representative: usize,
}

/// Who is who in an album.
#[derive(Debug, Clone, Default)]
pub struct Album {
    /// Every face of every photo, in photo then face order.
    pub faces: Vec<AlbumFace>,
    /// The people with faces in the album: named first (by name), then by id.
    pub people: Vec<AlbumPerson>,
    /// Earlier clustered assignments `recluster` removed.
    pub cleared: usize,
}

impl Album {
    /// Faces without a person.
    pub fn unknown(&self) -> usize {
        self.faces.iter().filter(|f| f.person.is_none()).count()
    }
}

/// Decides who is who for the faces of `photos` (as [`Library::faces_of_file`] returned them;
/// `None` for photos that failed), recording new assignments and new people in `library`.
pub fn cluster(
    library: &Library,
    pipeline: &Pipeline,
    photos: &[Option<Arc<ImageFaces>>],
    config: &AlbumConfig,
) -> Result<Album> {
    let pid = library.pipeline_id(pipeline)?;
    let ccfg = &config.cluster;
    // 1. The album's faces with their library ids.
    let (mut faces, vectors) = album_faces(library, pid, photos)?;
    let ids: Vec<FaceId> = faces.iter().map(|f| f.id).collect();
    let cleared = if config.recluster {
        library.clear_clustered(&ids)?
    } else {
        0
    };
    for (f, a) in faces.iter_mut().zip(library.assignments_of(&ids)?) {
        if let Some((person, source)) = a {
            f.person = Some(person);
            f.source = Some(source);
        }
    }
    let dim = vectors.first().map_or(0, |v| v.len());

    // 2. New faces join the nearest known person within the threshold (single linkage, as the
    //    clustering graph links faces), never two faces of one photo to one person.
    let eligible = |f: &AlbumFace| f.person.is_none() && f.bbox.width() >= ccfg.min_face;
    let new: Vec<usize> = (0..faces.len()).filter(|&i| eligible(&faces[i])).collect();
    let mut taken: HashSet<(usize, i64)> = faces
        .iter()
        .filter_map(|f| f.person.map(|p| (f.photo, p)))
        .collect();
    let mut joins: Vec<(FaceId, i64)> = Vec::new();
    let gallery = library.assigned(pid)?;
    if !new.is_empty() && !gallery.faces.is_empty() && gallery.dim == dim && dim > 0 {
        let near = join_nearest(
            &faces,
            &vectors,
            &new,
            (&gallery.vectors, &gallery.faces, &gallery.person),
            dim,
            ccfg,
            &mut taken,
        );
        for (i, person) in near {
            faces[i].person = Some(person);
            faces[i].source = Some(Source::Clustered);
            faces[i].assigned_now = true;
            joins.push((faces[i].id, person));
        }
    }

    // 3. The rest are clustered among themselves; each group of at least `min_size` faces is
    //    a new person.
    let rest: Vec<usize> = new
        .iter()
        .copied()
        .filter(|&i| faces[i].person.is_none())
        .collect();
    let mut groups: Vec<Vec<FaceId>> = Vec::new();
    let mut group_members: Vec<Vec<usize>> = Vec::new();
    if !rest.is_empty() && dim > 0 {
        let emb: Vec<f32> = rest
            .iter()
            .flat_map(|&i| vectors[i].iter().copied())
            .collect();
        let photo: Vec<u32> = rest.iter().map(|&i| faces[i].photo as u32).collect();
        let result = cluster::cluster(&emb, dim, &photo, ccfg)?;
        for members in &result.clusters {
            group_members.push(members.iter().map(|&j| rest[j]).collect());
            groups.push(members.iter().map(|&j| faces[rest[j]].id).collect());
        }
    }
    // A new group's person until it has an id: -1 - its index.
    let pending = |g: usize| -1 - g as i64;
    for (g, members) in group_members.iter().enumerate() {
        for &i in members {
            faces[i].person = Some(pending(g));
            faces[i].source = Some(Source::Clustered);
            faces[i].assigned_now = true;
            taken.insert((faces[i].photo, pending(g)));
        }
    }

    // 3b. Faces left over (a group under the minimum size, noise) join the person of a face
    //     this run assigned when one is within the threshold: the next run would join them so
    //     (they are unassigned, so new to it), and an album clustered twice must not change.
    //     Repeated until nothing joins; each pass searches only the faces the last one assigned
    //     (the leftovers were searched against the earlier ones already).
    let mut fresh: Vec<usize> = (0..faces.len())
        .filter(|&i| faces[i].assigned_now)
        .collect();
    while !fresh.is_empty() && dim > 0 {
        let left: Vec<usize> = new
            .iter()
            .copied()
            .filter(|&i| faces[i].person.is_none())
            .collect();
        if left.is_empty() {
            break;
        }
        let rows: Vec<f32> = fresh
            .iter()
            .flat_map(|&i| vectors[i].iter().copied())
            .collect();
        let ids: Vec<FaceId> = fresh.iter().map(|&i| faces[i].id).collect();
        let persons: Vec<i64> = fresh.iter().filter_map(|&i| faces[i].person).collect();
        let near = join_nearest(
            &faces,
            &vectors,
            &left,
            (&rows, &ids, &persons),
            dim,
            ccfg,
            &mut taken,
        );
        fresh.clear();
        for (i, person) in near {
            faces[i].person = Some(person);
            faces[i].source = Some(Source::Clustered);
            faces[i].assigned_now = true;
            if person < 0 {
                let g = (-1 - person) as usize;
                group_members[g].push(i);
                groups[g].push(faces[i].id);
            } else {
                joins.push((faces[i].id, person));
            }
            fresh.push(i);
        }
    }
    let new_people = library.record_clustering(&joins, &groups)?;
    for f in &mut faces {
        if let Some(p) = f.person.filter(|&p| p < 0) {
            f.person = Some(new_people[(-1 - p) as usize]);
        }
    }
    if config.recluster {
        library.prune_people()?;
    }

    // 4. The people of this album, with folder names.
    let people = album_people(library, &faces, &vectors, dim, ccfg)?;
    Ok(Album {
        faces,
        people,
        cleared,
    })
}

/// The faces of the album's photos in order, with their library ids and embeddings.
fn album_faces<'a>(
    library: &Library,
    pid: crate::library::PipelineId,
    photos: &'a [Option<Arc<ImageFaces>>],
) -> Result<(Vec<AlbumFace>, Vec<&'a [f32]>)> {
    let mut faces = Vec::new();
    let mut vectors: Vec<&[f32]> = Vec::new();
    for (i, p) in photos.iter().enumerate() {
        let Some(p) = p else { continue };
        if p.faces.is_empty() {
            continue;
        }
        let ids = library.face_ids(pid, &p.sha256)?;
        for (k, (f, id)) in p.faces.iter().zip(ids).enumerate() {
            faces.push(AlbumFace {
                photo: i,
                index: k,
                id,
                bbox: f.bbox,
                person: None,
                source: None,
                assigned_now: false,
            });
            vectors.push(&f.embedding);
        }
    }
    Ok((faces, vectors))
}

/// The people of the album (each assigned person of `faces`), named people first, with their
/// folder names made unique.
fn album_people(
    library: &Library,
    faces: &[AlbumFace],
    vectors: &[&[f32]],
    dim: usize,
    ccfg: &ClusterConfig,
) -> Result<Vec<AlbumPerson>> {
    let mut by_person: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (i, f) in faces.iter().enumerate() {
        if let Some(p) = f.person {
            by_person.entry(p).or_default().push(i);
        }
    }
    let names = library.names(&by_person.keys().copied().collect::<Vec<_>>())?;
    let mut people: Vec<AlbumPerson> = by_person
        .into_iter()
        .map(|(id, members)| {
            let name = names.get(&id).cloned().flatten();
            let label = label(id, name.as_deref());
            let photos: HashSet<usize> = members.iter().map(|&i| faces[i].photo).collect();
            let representative = medoid(&members, vectors, dim, ccfg.metric);
            AlbumPerson {
                id,
                folder: folder_name(&label),
                label,
                name,
                photos: photos.len(),
                new_faces: members.iter().filter(|&&i| faces[i].assigned_now).count(),
                representative,
                faces: members,
            }
        })
        .collect();
    people
        .sort_by(|a, b| (a.name.is_none(), &a.name, a.id).cmp(&(b.name.is_none(), &b.name, b.id)));
    // Two names may make the same folder ("Ada Lovelace", "Ada_Lovelace"): the later one gets
    // its id appended. Reserved folder names never come from a name (see people::check_name).
    let mut used: HashMap<String, usize> = HashMap::new();
    for p in &mut people {
        let n = used.entry(p.folder.to_lowercase()).or_insert(0);
        *n += 1;
        if *n > 1 {
            p.folder = format!("{}_{}", p.folder, p.id);
        }
    }
    Ok(people)
}

/// One pass of joining: each of `queries` (unassigned faces) joins the person of its nearest
/// gallery row (`(vectors, face ids, person ids)`) within the threshold, nearest pairs first
/// (single linkage, as the clustering graph links faces), never two faces of one photo to one
/// person (`taken`, updated). Returns the `(face index, person)` joins.
fn join_nearest(
    faces: &[AlbumFace],
    vectors: &[&[f32]],
    queries: &[usize],
    gallery: (&[f32], &[FaceId], &[i64]),
    dim: usize,
    ccfg: &ClusterConfig,
    taken: &mut HashSet<(usize, i64)>,
) -> Vec<(usize, i64)> {
    let (rows, row_face, row_person) = gallery;
    let flat: Vec<f32> = queries
        .iter()
        .flat_map(|&i| vectors[i].iter().copied())
        .collect();
    let near = distance::within(&flat, rows, dim, ccfg.threshold, ccfg.metric, false);
    // (distance, face, person): each face's nearest row per person.
    let mut cands: Vec<(f32, usize, i64)> = Vec::new();
    for (q, list) in near.iter().enumerate() {
        let mut seen = HashSet::new();
        for n in list {
            let row = n.index as usize;
            // A face is not its own evidence (assigned faces are never queries, but a
            // photo's other faces in the gallery must not pull it either).
            let person = row_person[row];
            if row_face[row] == faces[queries[q]].id || !seen.insert(person) {
                continue;
            }
            cands.push((n.distance, queries[q], person));
        }
    }
    cands.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut joined = HashSet::new();
    let mut out = Vec::new();
    for (_, i, person) in cands {
        if joined.contains(&i) || taken.contains(&(faces[i].photo, person)) {
            continue;
        }
        taken.insert((faces[i].photo, person));
        joined.insert(i);
        out.push((i, person));
    }
    out
}

/// The member nearest the members' mean.
fn medoid(members: &[usize], vectors: &[&[f32]], dim: usize, metric: distance::Metric) -> usize {
    let mut mean = vec![0f32; dim];
    for &i in members {
        for (m, v) in mean.iter_mut().zip(vectors[i]) {
            *m += v / members.len() as f32;
        }
    }
    members
        .iter()
        .copied()
        .min_by(|&a, &b| {
            metric
                .distance(vectors[a], &mean)
                .total_cmp(&metric.distance(vectors[b], &mean))
        })
        .unwrap_or(0)
}

/// A photo that could not be used (read, decoded, analysed or placed), with the reason.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The photo (empty when the error names no file).
    pub path: PathBuf,
    /// What went wrong.
    pub error: Error,
}

/// Everything [`run`] found: the photos, their faces, who is who, and what failed.
#[derive(Debug, Clone, Default)]
pub struct AlbumRun {
    /// The album's photos in walk order (excluded folders left out); [`AlbumFace::photo`]
    /// indexes this list.
    pub inputs: Vec<PathBuf>,
    /// The faces of each photo (`None`: the photo failed).
    pub photos: Vec<Option<Arc<ImageFaces>>>,
    /// Who is who.
    pub album: Album,
    /// Photos in which no face was found (indices into `inputs`).
    pub no_faces: Vec<usize>,
    /// Paths that could not be used, in the order they failed (walk, analysis, placing).
    pub failed: Vec<Failure>,
    /// Photos this run detected and embedded (the rest came from the library).
    pub analysed: usize,
    /// Output folders of earlier runs found inside the album (a folder holding facekit's
    /// `clusters.json`): their copies of the album's photos are left out, not counted twice.
    pub skipped_outputs: Vec<PathBuf>,
}

/// The folder of the faces without a person.
pub const UNKNOWN_FOLDER: &str = "unknown";
/// The folder of the photos without faces.
pub const NO_FACES_FOLDER: &str = "no_faces";

/// Clusters the album made of the image files under `paths` (folders walked recursively): every
/// face of every photo (from `library`, else detected and embedded by `pipeline` and kept in
/// `library`), then who is who as [`cluster()`] decides. Runs data-parallel in the current rayon
/// pool; files that cannot be used are reported to `progress` and listed in
/// [`AlbumRun::failed`], and the run goes on without them.
pub fn run(
    paths: &[PathBuf],
    library: &Library,
    pipeline: &Pipeline,
    config: &AlbumConfig,
    progress: &dyn Progress,
) -> Result<AlbumRun> {
    let mut failed = Vec::new();
    let mut inputs = Vec::new();
    for item in crate::io::collect_inputs(paths) {
        match item {
            Ok(p) => inputs.push(p),
            Err(e) => {
                progress.failed(&e);
                failed.push(Failure {
                    path: e.path().map(Path::to_path_buf).unwrap_or_default(),
                    error: e,
                });
            }
        }
    }
    let exclude: Vec<PathBuf> = config
        .exclude
        .iter()
        .map(|p| std::path::absolute(p).map_err(|e| Error::io(p, e)))
        .collect::<Result<_>>()?;
    inputs.retain(|p| {
        std::path::absolute(p).map_or(true, |a| !exclude.iter().any(|x| a.starts_with(x)))
    });
    let skipped_outputs = drop_earlier_outputs(&mut inputs, paths);

    // 1. Every face of every photo (cached by content).
    progress.start("photos", inputs.len());
    let results: Vec<Result<Arc<ImageFaces>>> = library
        .faces_of_files_in_order(pipeline, &inputs, &config.load, false, &|| progress.step())
        .into_iter()
        .map(|r| r.map(|(faces, _)| faces))
        .collect();
    progress.finish();
    let mut photos = Vec::with_capacity(inputs.len());
    for (path, r) in inputs.iter().zip(results) {
        photos.push(match r {
            Ok(faces) => Some(faces),
            Err(e) => {
                progress.failed(&e);
                failed.push(Failure {
                    path: path.clone(),
                    error: e,
                });
                None
            }
        });
    }

    // 2. Who is who.
    library.flush()?;
    let album = cluster(library, pipeline, &photos, config)?;
    let no_faces = (0..photos.len())
        .filter(|&i| photos[i].as_ref().is_some_and(|p| p.faces.is_empty()))
        .collect();
    Ok(AlbumRun {
        inputs,
        photos,
        album,
        no_faces,
        failed,
        analysed: library.analysed_count(),
        skipped_outputs,
    })
}

/// Whether `dir` is the output folder of a `facekit cluster` run: it holds a `clusters.json`
/// that begins as facekit writes it (`{"faces": [...`).
fn is_cluster_output(dir: &Path) -> bool {
    use std::io::Read;
    let Ok(file) = std::fs::File::open(dir.join("clusters.json")) else {
        return false;
    };
    let mut head = Vec::new();
    if file.take(64).read_to_end(&mut head).is_err() {
        return false;
    }
    let compact: Vec<u8> = head
        .into_iter()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    compact.starts_with(b"{\"faces\":[")
}

/// Removes the photos that lie inside an earlier run's output folder (see
/// [`is_cluster_output`]) below one of the album `roots` and returns those folders. A root
/// itself is never skipped: clustering an output folder on purpose works.
fn drop_earlier_outputs(inputs: &mut Vec<PathBuf>, roots: &[PathBuf]) -> Vec<PathBuf> {
    let mut verdicts: std::collections::HashMap<PathBuf, bool> = Default::default();
    let mut found = std::collections::BTreeSet::new();
    inputs.retain(|p| {
        let Some(root) = roots.iter().find(|r| p.starts_with(r)) else {
            return true;
        };
        let outputs: Vec<&Path> = p
            .ancestors()
            .skip(1)
            .take_while(|d| *d != root.as_path() && d.starts_with(root))
            .filter(|d| {
                *verdicts
                    .entry(d.to_path_buf())
                    .or_insert_with(|| is_cluster_output(d))
            })
            .collect();
        match outputs.last() {
            Some(d) => {
                found.insert(d.to_path_buf());
                false
            }
            None => true,
        }
    });
    found.into_iter().collect()
}

impl AlbumRun {
    /// The folder of a person of [`AlbumRun::album`].
    pub fn folder_of(&self, person: i64) -> Option<&str> {
        self.album
            .people
            .iter()
            .find(|p| p.id == person)
            .map(|p| p.folder.as_str())
    }

    /// The folders each photo belongs in (by input index, sorted): its people's, [`UNKNOWN_FOLDER`]
    /// for a face without a person, [`NO_FACES_FOLDER`] for a photo without faces; none for a
    /// photo that failed.
    pub fn destinations(&self) -> Vec<Vec<String>> {
        let folder_of: HashMap<i64, &str> = self
            .album
            .people
            .iter()
            .map(|p| (p.id, p.folder.as_str()))
            .collect();
        let mut out: Vec<BTreeSet<String>> = vec![BTreeSet::new(); self.inputs.len()];
        for f in &self.album.faces {
            let folder = f.person.and_then(|p| folder_of.get(&p).copied());
            out[f.photo].insert(folder.unwrap_or(UNKNOWN_FOLDER).to_string());
        }
        for &i in &self.no_faces {
            out[i].insert(NO_FACES_FOLDER.to_string());
        }
        out.into_iter().map(|d| d.into_iter().collect()).collect()
    }

    /// Puts every photo into its [`destinations`](AlbumRun::destinations) with `organizer`; a
    /// photo that cannot be placed is reported to `progress`, added to
    /// [`AlbumRun::failed`], and the others are placed still.
    pub fn place(&mut self, organizer: &mut Organizer, progress: &dyn Progress) {
        progress.start("placing", self.inputs.len());
        for (i, dests) in self.destinations().iter().enumerate() {
            progress.step();
            if dests.is_empty() {
                continue;
            }
            if let Err(e) = organizer.place(&self.inputs[i], dests) {
                progress.failed(&e);
                self.failed.push(Failure {
                    path: self.inputs[i].clone(),
                    error: e,
                });
            }
        }
        progress.finish();
    }
}
