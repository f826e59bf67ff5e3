//! `facekit completions SHELL` (clap_complete) and `facekit man [SUBCOMMAND]...` (clap_mangen):
//! generated from the parser's own definitions, so they always match it. Man pages are one per
//! command, git-style: `facekit.1` lists the subcommands, `facekit-detect.1`,
//! `facekit-people-add.1`, ... hold each one's options and examples.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Command, CommandFactory};
use clap_mangen::Man;

use super::help;
use super::output::{note, write_stdout};

/// Arguments of `facekit completions`.
#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to write the completion script for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Arguments of `facekit man`.
#[derive(Args, Debug)]
pub struct ManArgs {
    /// A subcommand's page instead of facekit's (`facekit man detect`, `facekit man people add`).
    #[arg(value_name = "SUBCOMMAND")]
    path: Vec<String>,
    /// Write every page (facekit.1, facekit-detect.1, facekit-people-add.1, ...) into DIR
    /// instead of printing one.
    #[arg(long, value_name = "DIR", conflicts_with = "path")]
    out_dir: Option<PathBuf>,
    /// With --out-dir: replace pages already there.
    #[arg(long, requires = "out_dir")]
    force: bool,
}

/// Runs `facekit completions`: the script on standard output.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = super::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "facekit", &mut script);
    write_stdout(&script);
    Ok(ExitCode::SUCCESS)
}

/// Runs `facekit man`: one page on standard output, or every page into `--out-dir`.
pub fn man(args: ManArgs) -> anyhow::Result<ExitCode> {
    let mut root = super::Cli::command().disable_help_subcommand(true);
    root.build();
    if let Some(dir) = &args.out_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        let mut pages = Vec::new();
        collect(&root, "", &mut pages);
        for (path, cmd) in &pages {
            let man = man_of(cmd);
            let file = dir.join(man.get_filename());
            facekit::io::write_file_atomic(&file, &page(&man, cmd, path)?, args.force)?;
        }
        note!("{} man page(s) written to {}", pages.len(), dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let mut cmd = &root;
    for name in &args.path {
        cmd = cmd.find_subcommand(name).ok_or_else(|| {
            let known: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
            anyhow::anyhow!(
                "`{name}` is not a subcommand of `{}` (known: {})",
                cmd.get_display_name().unwrap_or(cmd.get_name()),
                known.join(", ")
            )
        })?;
    }
    write_stdout(&page(&man_of(cmd), cmd, &args.path.join(" "))?);
    Ok(ExitCode::SUCCESS)
}

/// clap_mangen's page of `cmd`, its footer naming facekit and its version on every page.
fn man_of(cmd: &Command) -> Man {
    Man::new(cmd.clone()).source(format!("facekit {}", env!("CARGO_PKG_VERSION")))
}

/// Every visible command below `cmd` (itself included) with its path ("people add").
fn collect<'a>(cmd: &'a Command, path: &str, out: &mut Vec<(String, &'a Command)>) {
    out.push((path.to_string(), cmd));
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        collect(sub, format!("{path} {}", sub.get_name()).trim(), out);
    }
}

/// The roff page of `cmd` (at `path`): clap_mangen's sections, then EXAMPLES (from
/// [`help::examples`]) and SEE ALSO.
fn page(man: &Man, cmd: &Command, path: &str) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut out)?;
    }
    let examples = help::examples(path);
    if !examples.is_empty() {
        out.extend_from_slice(b".SH EXAMPLES\n");
        for (what, command) in examples {
            out.extend(format!(".TP\n\\fB{}\\fR\n{}\n", roff(command), roff(what)).bytes());
        }
    }
    let words: Vec<&str> = path.split_whitespace().collect();
    if !words.is_empty() {
        // The parent pages: facekit(1), and facekit-people(1) for `people add`.
        let parents: Vec<String> = (0..words.len())
            .map(|k| {
                let name = std::iter::once("facekit").chain(words[..k].iter().copied());
                format!("\\fB{}\\fR(1)", roff(&name.collect::<Vec<_>>().join("-")))
            })
            .collect();
        out.extend(format!(".SH \"SEE ALSO\"\n{}\n", parents.join(", ")).bytes());
    }
    if cmd.get_version().is_some() {
        man.render_version_section(&mut out)?;
    }
    Ok(once_preamble(out))
}

/// clap_mangen starts each section it renders with the same two-line preamble; the page needs
/// it once.
fn once_preamble(page: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8_lossy(&page);
    let mut seen = std::collections::HashSet::new();
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let preamble = line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq");
        if preamble && !seen.insert(line.to_string()) {
            continue;
        }
        out.push_str(line);
    }
    out.into_bytes()
}

/// `text` escaped for roff: backslashes and hyphens, and a leading `.` or `'` made literal.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}
