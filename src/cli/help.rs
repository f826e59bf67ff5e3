//! The examples shown under every subcommand's `--help` (clap's `after_help`) and in the man
//! pages' EXAMPLES sections: one table, keyed by the command's path ("detect", "people add").

use clap::builder::styling::Style;
use clap::builder::StyledStr;

/// One example: what it does (one line) and the command line.
pub type Example = (&'static str, &'static str);

/// Every command's examples, by its path below `facekit` ("" is `facekit` itself).
const EXAMPLES: &[(&str, &[Example])] = &[
    (
        "",
        &[
            ("Same person? Exit 0 when yes, 1 when no", "facekit verify id.jpg selfie.jpg"),
            ("One row per face: score and box", "facekit detect photo.jpg"),
            ("An album into one folder per person", "facekit cluster album/ --out by-person/"),
            ("Who is in this photo? (after facekit people import)", "facekit identify party.jpg"),
        ],
    ),
    (
        "detect",
        &[
            ("A table: one row per face (score, box) and a summary on stderr", "facekit detect photo.jpg"),
            ("JSON Lines, one object per image; folders are walked", "facekit detect --json album/ > faces.jsonl"),
            ("Copies with boxes and landmarks drawn, as out/<stem>_faces.jpg", "facekit detect --annotate out/ photo.jpg"),
            ("YuNet instead of MTCNN, faces down to 12 px", "facekit detect --detector yunet --min-face 12 crowd.jpg"),
        ],
    ),
    (
        "align",
        &[
            ("150 px chips aligned as dlib does, chips/<stem>_<face>.png", "facekit align --out chips/ photo.jpg"),
            ("112 px ArcFace-style chips for every photo of an album", "facekit align --out chips/ --template arcface --size 112 album/"),
        ],
    ),
    (
        "embed",
        &[
            ("One JSON line per face with its 128-d embedding", "facekit embed photo.jpg"),
            ("A CSV for a whole album, written atomically", "facekit embed --format csv --out faces.csv album/"),
            ("A float32 .npy matrix, one row per face", "facekit embed --format npy --out faces.npy album/"),
        ],
    ),
    (
        "verify",
        &[
            ("Same person? Exit 0 same, 1 different, 2 error", "facekit verify id.jpg selfie.jpg"),
            ("Compare the closest pair of faces of two group photos", "facekit verify --policy best-pair a.jpg b.jpg"),
            ("A stricter threshold, the verdict as JSON", "facekit verify --threshold 0.5 --json a.jpg b.jpg"),
        ],
    ),
    (
        "threshold-sweep",
        &[
            ("Which threshold? Pairs from a folder with one subfolder per person", "facekit threshold-sweep people/"),
            ("LFW's protocol: its pairs file and 10 folds, with the ROC chart", "facekit threshold-sweep lfw/ --pairs pairs.txt --plot roc.png"),
            ("The whole report as one JSON object", "facekit threshold-sweep people/ --folds 5 --json > sweep.json"),
        ],
    ),
    (
        "cluster",
        &[
            ("Copies into one folder per person (the album is untouched)", "facekit cluster album/ --out by-person/"),
            ("Move the photos instead (undoable), with a JSON summary", "facekit cluster album/ --out sorted/ --mode move --json"),
            ("Put every moved photo back", "facekit cluster --undo sorted/"),
        ],
    ),
    (
        "identify",
        &[
            ("Who is in this photo? One row per face: a name or unknown", "facekit identify party.jpg"),
            ("The 3 nearest people of every face of an album, as JSON Lines", "facekit identify --top-k 3 --json album/"),
            ("face_recognition's CSV: path,name,distance", "facekit identify --csv party.jpg"),
        ],
    ),
    (
        "people",
        &[
            ("Enroll a folder of known people (one subfolder per person)", "facekit people import known_people/"),
            ("The people of the face library", "facekit people list"),
            ("Name a person found by cluster", "facekit people rename person_0007 \"Ada Lovelace\""),
        ],
    ),
    (
        "people add",
        &[
            ("Enroll Ada from two photos (the largest face of each)", "facekit people add \"Ada Lovelace\" ada1.jpg ada2.jpg"),
            ("Enroll from a folder of her photos, one JSON record per photo", "facekit people add Ada photos/ada/ --json"),
        ],
    ),
    (
        "people import",
        &[
            ("Each subfolder is a person, each loose photo is named by its file", "facekit people import known_people/"),
            ("Enroll with YuNet (identify must then use --detector yunet too)", "facekit people import known_people/ --detector yunet"),
        ],
    ),
    (
        "people list",
        &[
            ("A table: id, name, faces by source, photos", "facekit people list"),
            ("The same as a JSON array", "facekit people list --json"),
        ],
    ),
    (
        "people rename",
        &[
            ("Name a person that cluster found", "facekit people rename person_0007 \"Ada Lovelace\""),
            ("Rename by id", "facekit people rename '#7' Ada"),
        ],
    ),
    (
        "people merge",
        &[
            ("Two clusters are one person: keep Ada", "facekit people merge Ada person_0012"),
            ("Several at once", "facekit people merge Ada person_0012 person_0031"),
        ],
    ),
    (
        "people remove",
        &[
            ("Forget a person (their faces stay, unassigned)", "facekit people remove person_0012"),
            ("By id, in another face library", "facekit people remove '#12' --library family.db"),
        ],
    ),
    (
        "people assign",
        &[
            ("The only face of a photo is Ada's", "facekit people assign Ada portrait.jpg"),
            ("Face 2 of a group photo is Ada's (faces are numbered as detect shows them)", "facekit people assign Ada group.jpg --face 2"),
        ],
    ),
    (
        "people unassign",
        &[
            ("Face 2 of a group photo is nobody's", "facekit people unassign group.jpg --face 2"),
            ("The only face of a photo is nobody's", "facekit people unassign portrait.jpg"),
        ],
    ),
    (
        "train",
        &[
            ("A head on frozen features from one subfolder per person", "facekit train people/ --out mine.safetensors"),
            ("Contrastive loss, 40 epochs, the last ResNet stage trained too", "facekit train people/ --out mine.safetensors --loss contrastive --epochs 40 --train-layers last-stage"),
            ("The training report (losses, validation, calibrated threshold) as JSON", "facekit train people/ --out mine.safetensors --json > train.json"),
        ],
    ),
    (
        "completions",
        &[
            ("bash (loaded on demand by bash-completion)", "facekit completions bash > ~/.local/share/bash-completion/completions/facekit"),
            ("zsh (a folder on $fpath)", "facekit completions zsh > ~/.zfunc/_facekit"),
            ("fish", "facekit completions fish > ~/.config/fish/completions/facekit.fish"),
        ],
    ),
    (
        "man",
        &[
            ("Install facekit's man page", "facekit man > ~/.local/share/man/man1/facekit.1"),
            ("Read one subcommand's page without installing it", "facekit man detect | man -l -"),
            ("Install every page (facekit.1, facekit-detect.1, ...)", "facekit man --out-dir ~/.local/share/man/man1"),
        ],
    ),
];

/// The examples of the command at `path` ("" for `facekit`, "people add"); empty if none.
pub fn examples(path: &str) -> &'static [Example] {
    EXAMPLES
        .iter()
        .find(|(p, _)| *p == path)
        .map_or(&[], |(_, e)| *e)
}

/// Every command path that has examples.
#[cfg(test)]
pub fn paths() -> impl Iterator<Item = &'static str> {
    EXAMPLES.iter().map(|(p, _)| *p)
}

/// The `after_help` text of the command at `path`: an "Examples:" heading (styled as clap's
/// headings) and each example's explanation as a `#` comment above its command line.
pub fn after_help(path: &str) -> StyledStr {
    let heading = Style::new().bold().underline();
    let mut text = format!("{heading}Examples:{heading:#}\n");
    for (k, (what, command)) in examples(path).iter().enumerate() {
        if k > 0 {
            text.push('\n');
        }
        text.push_str(&format!("  # {what}\n  {command}\n"));
    }
    StyledStr::from(text)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    /// Splits an example into words as a shell would (quotes, no expansion), up to a
    /// redirection or pipe.
    fn words(line: &str) -> Vec<String> {
        let (mut words, mut word, mut quote, mut started) =
            (Vec::new(), String::new(), None, false);
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), c) => word.push(c),
                (None, '"' | '\'') => {
                    quote = Some(c);
                    started = true;
                }
                (None, '>' | '|') => break,
                (None, c) if c.is_whitespace() => {
                    if started || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    started = false;
                }
                (None, c) => word.push(c),
            }
        }
        if started || !word.is_empty() {
            words.push(word);
        }
        words
    }

    #[test]
    fn every_example_parses_and_is_for_its_command() {
        let mut n = 0;
        for path in super::paths() {
            for (what, line) in super::examples(path) {
                assert!(!what.is_empty() && !what.contains('\n'), "{line}");
                let words = words(line);
                assert_eq!(words[0], "facekit", "{line}");
                let sub: Vec<&str> = path.split_whitespace().collect();
                // Top-level examples may use any subcommand.
                if !sub.is_empty() {
                    assert_eq!(&words[1..=sub.len()], &sub[..], "{line}");
                }
                if let Err(e) = super::super::Cli::try_parse_from(&words) {
                    panic!("{line}: {e}");
                }
                n += 1;
            }
        }
        assert!(n >= 40, "{n} examples");
    }

    #[test]
    fn every_subcommand_has_examples() {
        fn walk(cmd: &clap::Command, path: &str) {
            if cmd.get_name() != "help" {
                let n = super::examples(path).len();
                assert!((2..=4).contains(&n), "{n} examples for `facekit {path}`");
            }
            for sub in cmd.get_subcommands() {
                let p = format!("{path} {}", sub.get_name());
                walk(sub, p.trim());
            }
        }
        walk(&super::super::Cli::command(), "");
    }

    #[test]
    fn shell_words() {
        assert_eq!(
            words("facekit people rename '#7' \"Ada Lovelace\" > x"),
            ["facekit", "people", "rename", "#7", "Ada Lovelace"]
        );
    }
}
